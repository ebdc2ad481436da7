"""Names shared by the three FaceNet (Inception-ResNet-v1) converters."""

# Sandberg's TF scope of each stem convolution -> facenet-pytorch's InceptionResnetV1 module.
STEM_LAYERS = {
    "Conv2d_1a_3x3": "conv2d_1a",
    "Conv2d_2a_3x3": "conv2d_2a",
    "Conv2d_2b_3x3": "conv2d_2b",
    "Conv2d_3b_1x1": "conv2d_3b",
    "Conv2d_4a_3x3": "conv2d_4a",
    "Conv2d_4b_3x3": "conv2d_4b",
}
