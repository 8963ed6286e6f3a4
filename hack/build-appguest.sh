#!/usr/bin/env bash
# Build the Debian application guest: the tiny guest's Debian kernel, a small busybox
# initramfs that mounts the root disk, and an ext4 root disk made by mmdebstrap with
# openssh-server, xauth, x11-apps (xeyes) and xterm (docs/dev/appguest.md).
#
# Why: ssh, X11 forwarding and published applications need a real sshd and real X
# clients, which the busybox guest has not; minbase + those packages, no systemd, boots
# under TCG in seconds. No key is in the image: the guest's init authorizes the keys the
# controller puts on the kernel command line (kv.sshkeys=, from the VM's key Secret).
#
# Output (outside the repo, cached):
#   ${KUBEVISOR_CACHE:-/var/cache/kubevisor}/images/appguest/vmlinuz
#   ${KUBEVISOR_CACHE:-/var/cache/kubevisor}/images/appguest/initrd.img
#   ${KUBEVISOR_CACHE:-/var/cache/kubevisor}/images/appguest/appguest.qcow2  (root, 2G ext4)
#
# Boot with: kernel=vmlinuz initrd=initrd.img cmdline="console=ttyS0 root=/dev/vda"
# Guest cmdline parameters read by its init (/sbin/kv-init on the root disk):
#   kv.ip=10.77.0.100/24  kv.gw=10.77.0.1  kv.hostname=NAME  kv.script=BASE64
#   kv.sshkeys=BASE64     authorized_keys of root (base64 of newline-separated key lines)
#   kv.hostkey=BASE64     the sshd host key: the body of an OpenSSH Ed25519 private key
#                         (no armour lines); without it one is generated on first boot
# Console markers: "kubevisor-appguest: booted", "kubevisor-appguest: sshd up",
# "kubevisor-appguest: ready" (only once sshd listens: the agent's GuestReady).
#
# Second run is a no-op when the kernel, busybox, the package list and this script are
# unchanged (the key hashes them, like hack/build-image.sh).
set -euo pipefail

CACHE="${KUBEVISOR_CACHE:-/var/cache/kubevisor}"
OUT="$CACHE/images/appguest"
SUITE="${KUBEVISOR_IMAGE_SUITE:-bookworm}"
MIRROR="${KUBEVISOR_IMAGE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=openssh-server,xauth,x11-apps,xterm,iproute2,iputils-ping,procps
# Modules the initramfs loads (dependencies resolved by modprobe; a failing one, such as
# crc32c-intel on a CPU without SSE4.2, is skipped).
MODULES=(virtio_pci virtio_blk virtio_net ext4)
DISK_SIZE=2G

command -v mmdebstrap >/dev/null || { echo "build-appguest: mmdebstrap is required (apt-get install mmdebstrap)" >&2; exit 1; }
command -v mke2fs >/dev/null || { echo "build-appguest: mke2fs is required (e2fsprogs)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "build-appguest: /bin/busybox is required (busybox-static; hack/build-guest.sh installs it)" >&2; exit 1; }
KVER=$(ls /boot/vmlinuz-*-amd64 | sed 's|/boot/vmlinuz-||' | sort -V | tail -n1)
KERNEL="/boot/vmlinuz-$KVER"

STAMP=$(
  {
    echo "kver=$KVER modules=${MODULES[*]} suite=$SUITE packages=$PACKAGES size=$DISK_SIZE"
    sha256sum "$KERNEL" /bin/busybox "${BASH_SOURCE[0]}"
  } | sha256sum | cut -d' ' -f1
)
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] \
  && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/appguest.qcow2" ]; then
  echo "build-appguest: up to date (kernel $KVER)" >&2
  printf '%s\n' "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/appguest.qcow2"
  exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d "$CACHE/images/appguest-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- initramfs: busybox, the modules, an init that mounts root=/dev/vda and switches ---
IR="$WORK/initramfs"
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$IR/bin/busybox"
for applet in sh mount umount insmod switch_root mkdir cat sleep echo usleep; do
  ln -sf busybox "$IR/bin/$applet"
done
: >"$IR/modules.order"
declare -A seen=()
for m in "${MODULES[@]}"; do
  while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    [ -n "${seen[$path]:-}" ] && continue
    seen[$path]=1
    base=$(basename "$path")
    case "$path" in
      *.ko.xz) xz -dc "$path" >"$IR/lib/modules/${base%.xz}"; base=${base%.xz} ;;
      *.ko.zst) zstd -qdc "$path" >"$IR/lib/modules/${base%.zst}"; base=${base%.zst} ;;
      *) cp "$path" "$IR/lib/modules/$base" ;;
    esac
    echo "$base" >>"$IR/modules.order"
  done < <(modprobe -C /dev/null -S "$KVER" --show-depends "$m")
done
cat >"$IR/init" <<'EOF'
#!/bin/sh
# kubevisor appguest initramfs: load drivers, mount the root disk, hand over to kv-init.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "kubevisor-appguest: booted kernel=$(cat /proc/sys/kernel/osrelease)" >/dev/console
for m in $(cat /modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=/dev/*) root="${arg#root=}" ;; esac
done
i=0; while [ ! -b "$root" ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
if ! mount -t ext4 -o rw "$root" /newroot; then
  echo "kubevisor-appguest: cannot mount $root" >/dev/console
  exec sh
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/kv-init
EOF
chmod +x "$IR/init"
(cd "$IR" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$WORK/initrd.img"

# --- the init on the root disk ---
mkdir -p "$WORK/extra/sbin"
cat >"$WORK/extra/sbin/kv-init" <<'EOF'
#!/bin/sh
# kubevisor appguest init (PID 1, no systemd): network and keys from the kernel command
# line, host key on first boot, sshd, the ready marker; then reap children forever.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw /
ip=""; gw=""; keys=""; hostkey=""; script=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    kv.ip=*) ip="${arg#kv.ip=}" ;;
    kv.gw=*) gw="${arg#kv.gw=}" ;;
    kv.hostname=*) hostname "${arg#kv.hostname=}" ;;
    kv.sshkeys=*) keys="${arg#kv.sshkeys=}" ;;
    kv.hostkey=*) hostkey="${arg#kv.hostkey=}" ;;
    kv.script=*) script="${arg#kv.script=}" ;;
  esac
done
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  echo "kubevisor-appguest: eth0 mac=$(cat /sys/class/net/eth0/address)" >/dev/console
  [ -n "$ip" ] && ip addr add "$ip" dev eth0
  [ -n "$gw" ] && ip route replace default via "$gw"
fi
mkdir -p /root/.ssh && chmod 700 /root/.ssh
if [ -n "$keys" ]; then
  echo "$keys" | base64 -d >/root/.ssh/authorized_keys 2>/dev/null
else
  : >/root/.ssh/authorized_keys
fi
chmod 600 /root/.ssh/authorized_keys
echo "kubevisor-appguest: authorized $(grep -c . /root/.ssh/authorized_keys) keys" >/dev/console
if [ -n "$hostkey" ]; then
  # the host key the VM's key Secret carries (api/vmaccess HOST_KEY_FIELD): known to
  # whoever made it, so their ssh checks this host
  umask 077
  { echo "-----BEGIN OPENSSH PRIVATE KEY-----"; echo "$hostkey" | fold -w 70
    echo "-----END OPENSSH PRIVATE KEY-----"; } >/etc/ssh/ssh_host_ed25519_key
  umask 022
  echo "kubevisor-appguest: host key from the command line" >/dev/console
fi
[ -s /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
mkdir -p /run/sshd && chmod 755 /run/sshd
if /usr/sbin/sshd; then
  echo "kubevisor-appguest: sshd up" >/dev/console
  echo "kubevisor-appguest: ready" >/dev/console
else
  echo "kubevisor-appguest: sshd failed" >/dev/console
fi
if [ -n "$script" ]; then
  echo "$script" | base64 -d >/tmp/kv-script.sh && sh /tmp/kv-script.sh >/dev/console 2>&1 &
fi
trap 'sync; mount -o remount,ro /; poweroff -f' USR2 TERM
while :; do wait; sleep 1; done
EOF
chmod 755 "$WORK/extra/sbin/kv-init"
mkdir -p "$WORK/extra/etc/ssh/sshd_config.d"
cat >"$WORK/extra/etc/ssh/sshd_config.d/kubevisor.conf" <<'EOF'
# kubevisor appguest: keys only (from the VM's key Secret), X11 forwarding for ssh -X.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
X11Forwarding yes
X11UseLocalhost yes
UseDNS no
EOF

echo "build-appguest: Debian $SUITE minbase with $PACKAGES (mmdebstrap)" >&2
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
  --customize-hook="sync-in $WORK/extra /" \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  --customize-hook='echo appguest >"$1/etc/hostname"' \
  --customize-hook='echo "127.0.0.1 localhost appguest" >"$1/etc/hosts"' \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" >"$1/etc/fstab"' \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
  "$SUITE" "$WORK/rootfs" "$MIRROR"

echo "build-appguest: ext4 root disk ($DISK_SIZE)" >&2
mke2fs -q -t ext4 -L kvroot -d "$WORK/rootfs" "$WORK/root.raw" "$DISK_SIZE"
qemu-img convert -q -f raw -O qcow2 "$WORK/root.raw" "$WORK/appguest.qcow2"

install -m 0644 "$KERNEL" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
install -m 0644 "$WORK/initrd.img" "$OUT/initrd.img.tmp" && mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
install -m 0644 "$WORK/appguest.qcow2" "$OUT/appguest.qcow2.tmp" && mv "$OUT/appguest.qcow2.tmp" "$OUT/appguest.qcow2"
echo "$STAMP" >"$OUT/.stamp"
echo "build-appguest: kernel $KVER, root disk $(du -h --apparent-size "$OUT/appguest.qcow2" | cut -f1)" >&2
printf '%s\n' "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/appguest.qcow2"
