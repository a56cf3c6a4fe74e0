//! MLX quantization (affine, mxfp4) bit-exact with mlx, and MLX model writing.
