#!/bin/busybox sh
# /init of both lab kernels (busybox sh). The guest kernel arms kdump and waits for the
# host's word to crash; the capture kernel (it has /proc/vmcore) runs capture.py.
# Lines starting with "LAB " on the console are read by the host (bench/lab/guest.py).
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin
mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run /tmp
# Not the balloon in the capture kernel: QEMU still asks for the guest's balloon, and
# the capture kernel's driver would inflate it out of its own 160 MiB.
while read -r module; do
    [ -e /proc/vmcore ] && [ "$module" = virtio_balloon ] && continue
    insmod "/lab/modules/$module.ko" 2>/dev/null
done < /lab/modules.txt
if [ -e /proc/vmcore ]; then
    ip link set lo up
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
    /usr/bin/python3 /lab/capture.py
    echo "LAB exit $?"
    poweroff -f
fi
echo "LAB guest $(uname -r) MemTotal $(sed -n 's/^MemTotal: *//p' /proc/meminfo)"
kexec -p /lab/vmlinuz --initrd=/lab/capture.img \
    --append="console=ttyS0 nr_cpus=1 reset_devices irqpoll panic=1 $(cat /lab/capture-args)" \
    || { echo "LAB failed kexec -p"; poweroff -f; }
echo "LAB armed $(cat /sys/kernel/kexec_crash_loaded) $(cat /sys/kernel/kexec_crash_size)"
read -r word
echo "LAB crashing ($word)"
echo c > /proc/sysrq-trigger
