"""Plain utilities with no knowledge of models or graphs: files, quiet third-party output, interrupts, images,
memory."""
