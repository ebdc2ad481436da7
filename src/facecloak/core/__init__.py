"""FaceCloak engine: image I/O, face detection and alignment, model zoo, attack, evaluation.

Never imports Qt. Tensors are ``B,C,H,W`` float in [0, 1] unless a function says otherwise.
"""
