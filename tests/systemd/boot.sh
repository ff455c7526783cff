#!/bin/sh
# Boots this machine's own systemd as pid 1 of new namespaces, for the end-to-end tests that
# run grace-rs under the real thing (tests/src/systemd.rs starts it):
#
#   unshare --mount --pid --fork --uts --ipc --net --propagation private boot.sh NAME ROOT
#
# Stage 1 (pid 1 of the new pid namespace, still in the host's cgroup namespace) makes a
# cgroup NAME in the unified and name=systemd hierarchies, moves itself there and unshares
# the cgroup namespace from inside (unsharing it from outside leaves systemd unable to move
# processes). Stage 2 builds a root: an overlay of / with a tmpfs upper layer (nothing written
# reaches the host), fresh proc (/proc/sys read-only), read-only sysfs, fresh cgroup mounts, a
# minimal /dev, tmpfs /tmp and /run; masks units that have no place in a test container;
# pivots into it and execs systemd.
set -eu
name=$1
root=$2
if [ "${3:-}" != stage2 ]; then
    for h in unified systemd; do
        mkdir -p "/sys/fs/cgroup/$h/$name"
        echo $$ > "/sys/fs/cgroup/$h/$name/cgroup.procs"
    done
    exec unshare --cgroup /bin/sh "$0" "$name" "$root" stage2
fi

mount -t tmpfs tmpfs "$root"
mkdir -p "$root/upper" "$root/work" "$root/new"
mount -t overlay overlay -o "lowerdir=/,upperdir=$root/upper,workdir=$root/work" "$root/new"
n=$root/new
mount -t proc proc "$n/proc"
mount --bind "$n/proc/sys" "$n/proc/sys"
mount -o remount,bind,ro "$n/proc/sys"
mount -t sysfs -o ro sysfs "$n/sys"
mount -t tmpfs -o mode=755 tmpfs "$n/sys/fs/cgroup"
mkdir -p "$n/sys/fs/cgroup/unified" "$n/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$n/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd cgroup "$n/sys/fs/cgroup/systemd"
mount -t tmpfs -o mode=755 tmpfs "$n/dev"
for d in null zero full random urandom tty; do
    touch "$n/dev/$d"
    mount --bind "/dev/$d" "$n/dev/$d"
done
touch "$n/dev/console"
mount --bind /dev/null "$n/dev/console"
mkdir -p "$n/dev/pts" "$n/dev/shm"
mount -t tmpfs tmpfs "$n/tmp"
mount -t tmpfs tmpfs "$n/run"
mkdir -p "$n/etc/systemd/system"
for u in getty@.service console-getty.service serial-getty@.service container-getty@.service \
    systemd-logind.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer cron.service \
    postgresql.service mysql.service mariadb.service redis-server.service ssh.service; do
    ln -sf /dev/null "$n/etc/systemd/system/$u"
done
cd "$n"
mkdir -p oldroot
pivot_root . oldroot
cd /
umount -l /oldroot
exec env -i container=grace-tests /lib/systemd/systemd --system --unit=multi-user.target
