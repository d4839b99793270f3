"""The crash-kernel lab: dumpd in a real capture kernel under QEMU, beside the baselines
the kernel offers there (`dd`, an mmap copy, a bare TLS sender), in one boot.

    python -m bench.lab [--quick] [--guest-mem MiB] [--crashkernel SIZE] [--kaslr on|off]
                        [--balloon MiB] [--keep DIR]

images.py builds what boots, capture.py measures in the capture kernel, machine.py
drives QEMU and does the host's part, report.py turns it into bench/results/lab.md.
"""
