"""The CUDA backend without a GPU: the numpy-kernel emulator and the g++ fiber simulator of the real kernel sources."""
