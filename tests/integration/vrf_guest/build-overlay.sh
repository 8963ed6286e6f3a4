#!/bin/bash
# Overlay initramfs: a trimmed CPython + pyroute2 + pydantic + kubevisor + veth.ko + guest program.
# The CPython is the one the test runs on (the .venv's base interpreter, which hack/setup
# made the venv from): its binary, stdlib and version come from the test in the
# environment, so nothing here depends on where this machine keeps its Pythons.
set -euo pipefail
OUT=$1; REPO=$2; PROG=$3
: "${KV_GUEST_PY_BIN:?the interpreter binary}" "${KV_GUEST_PY_STDLIB:?its stdlib dir}"
: "${KV_GUEST_PY_VER:?its version, e.g. 3.11}" "${KV_GUEST_PYROUTE2:?the pyroute2 package dir}"
VER=$KV_GUEST_PY_VER
ST=$(mktemp -d); trap 'rm -rf "$ST"' EXIT
mkdir -p $ST/kv/lib $ST/kv/py/lib/python$VER $ST/kv/py/bin $ST/kv/site $ST/run $ST/var
ln -s ../run $ST/var/run
cp "$KV_GUEST_PY_BIN" $ST/kv/py/bin/python$VER
( cd "$KV_GUEST_PY_STDLIB" && tar cf - --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
   --exclude=turtledemo --exclude=ensurepip --exclude=site-packages --exclude=__pycache__ --exclude=lib2to3 \
   --exclude="config-$VER*" --exclude=pydoc_data --exclude='_test*' --exclude='*_tkinter*' . ) | tar xf - -C $ST/kv/py/lib/python$VER
# pyroute2 for netlink; pydantic and its dependencies because the agent parses VRFs with
# the API model (kubevisor.api.vrfs), the same rules the CRD carries. They sit beside
# pyroute2 in the test's site-packages.
SITE=$(dirname "$KV_GUEST_PYROUTE2")
for pkg in pyroute2 pydantic pydantic_core annotated_types typing_inspection typing_extensions.py; do
  cp -r "$SITE/$pkg" $ST/kv/site/
done
cp -r $REPO/operator/kubevisor $ST/kv/site/
find $ST/kv -name __pycache__ -prune -exec rm -rf {} +
for f in "$KV_GUEST_PY_BIN" "$KV_GUEST_PY_STDLIB"/lib-dynload/*.so $ST/kv/site/pydantic_core/*.so; do ldd $f 2>/dev/null | awk '/=> \//{print $3} /ld-linux/{print $1}'; done | sort -u | while read l; do cp -L $l $ST/kv/lib/; done
KVER=$(ls /boot/vmlinuz-*-amd64 | sed 's|/boot/vmlinuz-||' | sort -V | tail -n1)
cp /lib/modules/$KVER/kernel/drivers/net/veth.ko* $ST/kv/
cp $PROG $ST/kv/run.py
# Optional host programs (KV_GUEST_PROGRAMS, e.g. Debian's bird and birdc) at their own
# paths, with the shared libraries they link at Debian's paths: the tiny guest has a
# static busybox and no libc of its own.
for prog in ${KV_GUEST_PROGRAMS:-}; do
  mkdir -p $ST$(dirname $prog); cp -L $prog $ST$prog
  ldd $prog | awk '/=> \//{print $3} /ld-linux/{print $1}' | while read l; do
    mkdir -p $ST$(dirname $l); cp -L $l $ST$l; done
done
cat > $ST/kv/run.sh <<EOS
for m in /kv/veth.ko*; do case \$m in *.xz) xz -dc \$m > /tmp/veth.ko; insmod /tmp/veth.ko;; *) insmod \$m;; esac; done
mkdir -p /run/netns
grep -q " /sys/fs/cgroup " /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:\$PATH
PYTHONHOME=/kv/py PYTHONPATH=/kv/site PYTHONDONTWRITEBYTECODE=1 /kv/lib/ld-linux-x86-64.so.2 --library-path /kv/lib /kv/py/bin/python$VER /kv/run.py
EOS
( cd $ST && find . | cpio -o -H newc --quiet | gzip -1 ) > $OUT
