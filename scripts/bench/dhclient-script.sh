#!/bin/sh
# Address-only hook for ISC dhclient in the benchmark. dhclient never touches
# the interface itself: its script does. Debian's /sbin/dhclient-script would
# also rewrite the host's /etc/resolv.conf and hostname, which a benchmark must
# not do, so this one applies just the leased address (what is measured).
# dhclient checks new_ip_address and new_subnet_mask are dotted quads; they
# are still quoted, never evaluated.
# shellcheck disable=SC2154 # reason, new_ip_address, new_subnet_mask, interface come from the client's environment
case "$reason" in
BOUND | RENEW | REBIND | REBOOT)
    exec ip -4 addr replace "$new_ip_address/${new_subnet_mask:-255.255.255.255}" dev "$interface"
    ;;
esac
exit 0
