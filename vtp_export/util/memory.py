"""Process memory settings for the export, whose stages hand large blocks to each other (torch, then onnxruntime's
fp32 session, then its fp16 one)."""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LARGE_BLOCK = 1 << 20


def return_large_blocks_at_once() -> None:
    """Serve allocations of 1 MiB and more (weights, activations) by mmap, so that freeing one gives it back.

    glibc raises its mmap threshold as large blocks are freed and then keeps such blocks in the heap, where
    fragmentation stops the next stage from reusing them: full-size LLaVA-NeXT's export peaked at 2.6x its fp32
    weights, 1.9x with this. No effect where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
    except (OSError, AttributeError, TypeError):
        pass
