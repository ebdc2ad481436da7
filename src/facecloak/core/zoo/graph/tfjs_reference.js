// Reference runtime for the tfjs graph models: TensorFlow.js (pure-JS CPU backend) in Node.
// usage: node tfjs_reference.js MODEL_JSON WEIGHTS_BIN INPUT_F32 N,H,W,C OUTPUT_NODE OUTPUT_F32
// INPUT_F32 holds N*H*W*C little-endian float32 values (NHWC, already preprocessed); the output
// node's tensor is written as float32. Needs @tensorflow/tfjs on NODE_PATH (see from_tfjs.py).
const fs = require('fs');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelJson, weightsBin, inputFile, shapeText, outputNode, outputFile] = process.argv.slice(2);
  await tf.setBackend('cpu');
  const model = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const weightSpecs = model.weightsManifest.flatMap((group) => group.weights);
  const bin = fs.readFileSync(weightsBin);
  const weightData = bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength);
  const graph = await tf.loadGraphModel(tf.io.fromMemory({ modelTopology: model.modelTopology, weightSpecs, weightData }));
  const shape = shapeText.split(',').map(Number);
  const raw = fs.readFileSync(inputFile);
  const input = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), shape, 'float32');
  const output = await graph.executeAsync(input, outputNode);
  const values = await output.data();
  fs.writeFileSync(outputFile, Buffer.from(new Float32Array(values).buffer));
  process.stdout.write(JSON.stringify(output.shape));
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
