"""SDS image-to-3D and CLIP-similarity evaluation."""
