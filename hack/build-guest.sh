#!/usr/bin/env bash
# Build the tiny test guest: Debian's distribution kernel + a busybox initramfs.
#
# Why: e2e tests need a real guest that boots in seconds under TCG, has virtio NIC/disk
# drivers, and carries the kernel features the CI host lacks (l3mdev VRF, 802.1Q, dummy,
# macvlan, vxlan, bridge) so those code paths can be exercised inside a VM.
#
# Output (outside the repo, cached):
#   ${KUBEVISOR_CACHE:-/var/cache/kubevisor}/images/tiny/vmlinuz
#   ${KUBEVISOR_CACHE:-/var/cache/kubevisor}/images/tiny/initrd.img
#   ${KUBEVISOR_CACHE:-/var/cache/kubevisor}/images/tiny/tiny.qcow2   (empty 64M base)
#
# Boot with: kernel=vmlinuz initrd=initrd.img cmdline="console=ttyS0"
# Optional guest cmdline parameters understood by /init:
#   kv.ip=10.77.0.100/24   static address on eth0      kv.gw=10.77.0.1  default route
#   kv.dhcp=1              run udhcpc on eth0 before "ready"
#   kv.hostname=NAME       hostname
#   kv.script=BASE64       a shell script to run after "ready" (output to the console)
# Console markers: "kubevisor-guest: booted", "kubevisor-guest: eth0 mac=..",
# "kubevisor-guest: ready"; afterwards a root shell runs on ttyS0.
#
# Second run is a no-op when the kernel, the busybox binary and this script are unchanged.
set -euo pipefail

CACHE="${KUBEVISOR_CACHE:-/var/cache/kubevisor}"
OUT="$CACHE/images/tiny"
# Modules the guest loads at boot, in this order (dependencies are resolved by modprobe).
MODULES=(virtio_pci virtio_blk virtio_scsi sd_mod virtio_net vrf 8021q dummy macvlan vxlan bridge)

need_pkgs=()
compgen -G "/boot/vmlinuz-*-amd64" >/dev/null || need_pkgs+=(linux-image-amd64)
# The initramfs has no libc, so busybox must be the static build.
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v qemu-img >/dev/null || need_pkgs+=(qemu-utils)
command -v modprobe >/dev/null || need_pkgs+=(kmod)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "build-guest: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${need_pkgs[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${need_pkgs[@]}" >&2; }
fi

# Newest installed Debian kernel.
KVER=$(ls /boot/vmlinuz-*-amd64 | sed 's|/boot/vmlinuz-||' | sort -V | tail -n1)
KERNEL="/boot/vmlinuz-$KVER"
[ -d "/lib/modules/$KVER" ] || { echo "build-guest: /lib/modules/$KVER missing" >&2; exit 1; }

stamp_input() {
  echo "kver=$KVER modules=${MODULES[*]}"
  sha256sum "$KERNEL" /bin/busybox "${BASH_SOURCE[0]}"
}
STAMP=$(stamp_input | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] \
  && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/tiny.qcow2" ]; then
  echo "build-guest: up to date (kernel $KVER)" >&2
  printf '%s\n' "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/tiny.qcow2"
  exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,mnt,usr/bin,usr/sbin,usr/share/udhcpc,lib/modules}
cp /bin/busybox "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done

# Ordered, de-duplicated insmod list (dependencies first), ignoring host modprobe.d options.
: >"$ROOT/etc/modules.order"
declare -A seen=()
for m in "${MODULES[@]}"; do
  while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    [ -n "${seen[$path]:-}" ] && continue
    seen[$path]=1
    base=$(basename "$path")
    case "$path" in
      *.ko.xz) xz -dc "$path" >"$ROOT/lib/modules/${base%.xz}"; base=${base%.xz} ;;
      *.ko.zst) zstd -qdc "$path" >"$ROOT/lib/modules/${base%.zst}"; base=${base%.zst} ;;
      *) cp "$path" "$ROOT/lib/modules/$base" ;;
    esac
    echo "$base" >>"$ROOT/etc/modules.order"
  done < <(modprobe -C /dev/null -S "$KVER" --show-depends "$m")
done

cat >"$ROOT/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# Minimal udhcpc hook: apply the lease to the interface.
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "kubevisor-guest: dhcp $interface $ip/${mask:-24}" >/dev/console ;;
esac
exit 0
EOF
chmod +x "$ROOT/usr/share/udhcpc/default.script"

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# kubevisor tiny guest init: mount, load drivers, bring up lo/eth0, print markers, shell.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo "kubevisor-guest: booted kernel=$(uname -r)" >/dev/console
for m in $(cat /etc/modules.order); do
  args=""
  [ "$m" = dummy.ko ] && args="numdummies=0"
  insmod "/lib/modules/$m" $args 2>/dev/null || echo "kubevisor-guest: insmod $m failed" >/dev/console
done
echo "kubevisor-guest: modules $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')" >/dev/console
ip=""; gw=""; dhcp=""; script=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    kv.ip=*) ip="${arg#kv.ip=}" ;;
    kv.gw=*) gw="${arg#kv.gw=}" ;;
    kv.dhcp=1) dhcp=1 ;;
    kv.hostname=*) hostname "${arg#kv.hostname=}" ;;
    kv.script=*) script="${arg#kv.script=}" ;;
  esac
done
ip link set lo up
# virtio_net probes asynchronously: wait up to 5 s for eth0.
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  echo "kubevisor-guest: eth0 mac=$(cat /sys/class/net/eth0/address)" >/dev/console
  [ -n "$ip" ] && ip addr add "$ip" dev eth0
  [ -n "$gw" ] && ip route replace default via "$gw"
  [ -n "$dhcp" ] && udhcpc -i eth0 -n -q -t 3 -T 1 >/dev/null 2>&1
  # Announce ourselves so bridges learn where this MAC lives (also useful after boot).
  [ -n "$ip" ] && arping -U -c 1 -I eth0 "${ip%/*}" >/dev/null 2>&1
else
  echo "kubevisor-guest: no eth0" >/dev/console
fi
for b in /sys/block/vd* /sys/block/sd*; do
  [ -e "$b" ] && echo "kubevisor-guest: disk $(basename "$b") sectors=$(cat "$b/size")" >/dev/console
done
echo "kubevisor-guest: ready" >/dev/console
if [ -n "$script" ]; then
  echo "$script" | base64 -d >/tmp/kv-script.sh && sh /tmp/kv-script.sh >/dev/console 2>&1
  echo "kubevisor-guest: script rc=$?" >/dev/console
fi
while true; do
  setsid cttyhack sh -l </dev/console >/dev/console 2>&1 || sleep 1
done
EOF
chmod +x "$ROOT/init"
echo 'PS1="kv-guest# "' >"$ROOT/etc/profile"
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"

(cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$WORK/initrd.img"
install -m 0644 "$KERNEL" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
install -m 0644 "$WORK/initrd.img" "$OUT/initrd.img.tmp" && mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
if [ ! -s "$OUT/tiny.qcow2" ]; then
  qemu-img create -q -f qcow2 "$OUT/tiny.qcow2.tmp" 64M && mv "$OUT/tiny.qcow2.tmp" "$OUT/tiny.qcow2"
fi
cp "$ROOT/etc/modules.order" "$OUT/modules.txt"
echo "$STAMP" >"$OUT/.stamp"
echo "build-guest: kernel $KVER, modules: $(tr '\n' ' ' <"$OUT/modules.txt")" >&2
printf '%s\n' "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/tiny.qcow2"
