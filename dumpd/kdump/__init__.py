"""makedumpfile's kdump-compressed format (and its flattened form): structures and
layout, no I/O. The sources read it (`dumpd.sources.kdump`), fetch writes it."""
