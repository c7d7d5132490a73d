#!/bin/sh
# Address-only hook for busybox udhcpc in the benchmark: udhcpc, like
# dhclient, applies nothing itself. Its default script (if any is installed)
# would also rewrite the host's resolv.conf, so this one only adds the leased
# address. udhcpc passes the address in $ip and the dotted netmask in $subnet.
# shellcheck disable=SC2154 # ip, subnet, interface come from the client's environment
case "$1" in
bound | renew)
    exec ip -4 addr replace "$ip/${subnet:-255.255.255.255}" dev "$interface"
    ;;
esac
exit 0
