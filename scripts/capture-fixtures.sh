#!/usr/bin/env bash
# Captures real DHCP server replies for the codec tests in
# crates/dhcp-engine/tests/captured.rs (issue 2: "codec tests with real
# captured packets").
#
# For each server (dnsmasq, then Kea) it makes a throwaway pair of network
# namespaces joined by a veth pair, starts the server in one with the same
# options (router, two DNS servers, MTU, a two-domain search list, NTP and
# RFC 3442 classless static routes), starts a small AF_PACKET capture on the
# client veth, runs `mirage-dhcp run --oneshot --no-acd` there, and writes the
# server's OFFER and ACK Ethernet frames as commented hex files into
# crates/dhcp-engine/tests/data/captured/ (<server>-offer.hex, <server>-ack.hex).
#
# Traffic stays inside the namespaces this script creates. Needs root; removes
# everything it made, also on failure. The Rust build honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "capture-fixtures.sh: run as root" >&2; exit 1; }
for tool in dnsmasq kea-dhcp4 ethtool python3; do
    command -v "$tool" >/dev/null || { echo "capture-fixtures.sh: $tool missing (scripts/install-deps.sh)" >&2; exit 1; }
done

. scripts/rust-target.sh
cargo build --release --locked -q -p mirage-dhcp
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/$MIRAGE_TARGET/release/mirage-dhcp"
OUT="crates/dhcp-engine/tests/data/captured"
ID=$$
TMP="$(mktemp -d)"
NAMESPACES=()
cleanup() {
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

# What both servers hand out (192.0.2.0/24 is TEST-NET-1, RFC 5737; it only
# ever exists inside the namespaces below).
SERVER_IP=192.0.2.1
POOL_LO=192.0.2.50
POOL_HI=192.0.2.150
LEASE_SECS=3600
DNS="192.0.2.1, 192.0.2.53"
SEARCH="demo.example, lab.example"
NTP=192.0.2.123
MTU=1450
# Option 121: 198.51.100.0/24 via 192.0.2.254, then the default route via
# 192.0.2.1 (RFC 3442 makes clients ignore option 3 when 121 is present).
ROUTES_DNSMASQ="198.51.100.0/24,192.0.2.254,0.0.0.0/0,192.0.2.1"
ROUTES_HEX="18C63364C00002FE00C0000201"

# ---------------------------------------------------------------- helpers
cat > "$TMP/pcap.py" <<'PY'
"""Capture DHCP server replies on a packet socket; write them as commented hex."""
import json
import socket
import struct
import sys
import time

SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_CSUM_VALID = 1 << 7
ETH_P_ALL = 3
# struct tpacket_auxdata: u32 status, len, snaplen; u16 mac, net, vlan_tci, vlan_tpid
AUXDATA_LEN = 20
MESSAGE_TYPES = {2: "DHCPOFFER", 5: "DHCPACK", 6: "DHCPNAK"}


def dhcp_type(frame):
    """DHCP message type of an IPv4/UDP 67->68 frame, else None."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:
        return None
    udp = 14 + ihl
    sport, dport = struct.unpack_from("!HH", frame, udp)
    if (sport, dport) != (67, 68):
        return None
    i = udp + 8 + 240
    while i + 1 < len(frame):
        code = frame[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            return None
        length = frame[i + 1]
        if code == 53 and length == 1 and i + 2 < len(frame):
            return frame[i + 2]
        i += 2 + length
    return None


def capture(ifname, out_path, ready_path, seconds):
    """Keep the first OFFER and first ACK arriving on ifname, with tp_status."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((ifname, 0))
    open(ready_path, "w").close()
    seen = {}
    deadline = time.monotonic() + seconds
    while len(seen) < 2 and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(AUXDATA_LEN))
        except socket.timeout:
            break
        if addr[2] == PACKET_OUTGOING or flags & socket.MSG_TRUNC:
            continue
        kind = dhcp_type(data)
        if kind not in (2, 5) or kind in seen:
            continue
        status = None
        for level, typ, cdata in anc:
            if level == SOL_PACKET and typ == PACKET_AUXDATA and len(cdata) >= 4:
                status = struct.unpack_from("=I", cdata)[0]
        seen[kind] = {"hex": data.hex(), "tp_status": status}
    with open(out_path, "w") as f:
        json.dump({str(k): v for k, v in seen.items()}, f)
    if len(seen) < 2:
        sys.exit("capture: no OFFER and ACK within %ss (got %s)" % (seconds, sorted(seen)))


def ip(b):
    return ".".join(str(x) for x in b)


def names(data):
    """RFC 1035 names of an option 119 value, compression pointers followed."""
    out, i = [], 0
    while i < len(data):
        labels, j, jumps = [], i, 0
        end = None
        while j < len(data):
            n = data[j]
            if n == 0:
                end = j + 1 if end is None else end
                break
            if n & 0xC0 == 0xC0:
                end = j + 2 if end is None else end
                j = ((n & 0x3F) << 8) | data[j + 1]
                jumps += 1
                if jumps > 16:
                    return "(compression loop)"
                continue
            labels.append(data[j + 1 : j + 1 + n].decode("ascii", "replace"))
            j += 1 + n
        out.append(".".join(labels))
        if end is None:
            break
        i = end
    return ", ".join(out)


def routes(data):
    out, i = [], 0
    while i < len(data):
        width = data[i]
        sig = (width + 7) // 8
        dest = list(data[i + 1 : i + 1 + sig]) + [0] * (4 - sig)
        gw = data[i + 1 + sig : i + 5 + sig]
        out.append("%s/%d via %s" % (ip(dest), width, ip(gw)))
        i += 5 + sig
    return ", ".join(out)


def describe(code, v):
    """Comment text for one option, decoded the way RFC 2132 & co. define it."""
    ips = lambda: ", ".join(ip(v[k : k + 4]) for k in range(0, len(v), 4))
    u32 = lambda: str(struct.unpack("!I", v)[0]) if len(v) == 4 else v.hex()
    text = lambda: '"%s"' % v.decode("ascii", "replace")
    table = {
        1: ("subnet mask", ips),
        3: ("router", ips),
        6: ("DNS", ips),
        12: ("hostname", text),
        15: ("domain name", text),
        26: ("interface MTU", lambda: str(struct.unpack("!H", v)[0]) if len(v) == 2 else v.hex()),
        28: ("broadcast", ips),
        42: ("NTP servers", ips),
        51: ("lease time", u32),
        53: ("message type", lambda: "%d (%s)" % (v[0], MESSAGE_TYPES.get(v[0], "?"))),
        54: ("server identifier", ips),
        58: ("renewal time T1", u32),
        59: ("rebinding time T2", u32),
        61: ("client identifier", lambda: v.hex()),
        119: ("domain search (RFC 3397)", lambda: names(v)),
        121: ("classless static routes (RFC 3442)", lambda: routes(v)),
    }
    name, fmt = table.get(code, ("", lambda: "%d bytes" % len(v)))
    try:
        value = fmt()
    except (IndexError, struct.error, ValueError):
        value = "(undecodable) " + v.hex()
    return ("DHCP option %d %s %s" % (code, name, value)).replace("  ", " ")


def hexline(b):
    return " ".join("%02x" % x for x in b)


def annotate(frame):
    """Lines in the tests/data/*.hex convention: a comment, then its bytes."""
    lines = []

    def emit(comment, data, width=16):
        lines.append("# " + comment)
        for k in range(0, len(data), width):
            lines.append(hexline(data[k : k + width]))

    emit("Ethernet II: destination, source, type 0x%04x (IPv4)" % struct.unpack_from("!H", frame, 12), frame[:14])
    ihl = (frame[14] & 0x0F) * 4
    tos, total, ident, frag, ttl, proto, csum = struct.unpack_from("!xBHHHBBH", frame, 14)
    flags = "DF" if frag & 0x4000 else "none"
    emit(
        "IPv4: version 4 IHL %d, TOS 0x%02x, total %d, id 0x%04x, flags %s, TTL %d, UDP, checksum 0x%04x, %s -> %s"
        % (ihl // 4, tos, total, ident, flags, ttl, csum, ip(frame[26:30]), ip(frame[30:34])),
        frame[14 : 14 + ihl],
    )
    u = 14 + ihl
    sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", frame, u)
    emit("UDP: %d -> %d, length %d, checksum 0x%04x" % (sport, dport, ulen, ucsum), frame[u : u + 8])
    d = u + 8
    op, htype, hlen, hops, xid, secs, bflags = struct.unpack_from("!BBBBIHH", frame, d)
    emit(
        "DHCP op %d (BOOTREPLY), htype %d, hlen %d, hops %d, xid 0x%08x, secs %d, flags 0x%04x"
        % (op, htype, hlen, hops, xid, secs, bflags),
        frame[d : d + 12],
    )
    emit(
        "DHCP ciaddr %s, yiaddr %s, siaddr %s, giaddr %s"
        % tuple(ip(frame[d + k : d + k + 4]) for k in (12, 16, 20, 24)),
        frame[d + 12 : d + 28],
    )
    emit("DHCP chaddr (%d bytes of MAC, %d bytes zero)" % (hlen, 16 - hlen), frame[d + 28 : d + 44])
    emit("DHCP sname (64 bytes)", frame[d + 44 : d + 108])
    emit("DHCP file (128 bytes)", frame[d + 108 : d + 236])
    emit("DHCP magic cookie 99.130.83.99", frame[d + 236 : d + 240])
    i = d + 240
    end = u + ulen
    while i < end:
        code = frame[i]
        if code == 255:
            emit("DHCP option 255 END", frame[i : i + 1])
            i += 1
            break
        if code == 0:
            j = i
            while j < end and frame[j] == 0:
                j += 1
            emit("DHCP option 0 PAD x%d" % (j - i), frame[i:j])
            i = j
            continue
        length = frame[i + 1]
        emit(describe(code, frame[i + 2 : i + 2 + length]), frame[i : i + 2 + length])
        i += 2 + length
    if i < end:
        emit("DHCP padding after END (%d bytes)" % (end - i), frame[i:end])
    if end < len(frame):
        emit("Ethernet padding after the IPv4 packet (%d bytes)" % (len(frame) - end), frame[end:])
    return lines


def write(capture_json, kind, out_dir, header_path):
    """Write <kind>-offer.hex and <kind>-ack.hex from a capture."""
    with open(capture_json) as f:
        seen = json.load(f)
    with open(header_path) as f:
        header = [l.rstrip("\n") for l in f]
    for code, name in (("2", "offer"), ("5", "ack")):
        frame = bytes.fromhex(seen[code]["hex"])
        status = seen[code]["tp_status"]
        if status is None:
            sys.exit("capture: no PACKET_AUXDATA for the %s" % name)
        # The codec tests verify the UDP checksum: an unfinished one (checksum
        # offload) would make a useless fixture, so refuse it here.
        if status & TP_STATUS_CSUMNOTREADY:
            sys.exit("capture: %s %s has TP_STATUS_CSUMNOTREADY set" % (kind, name))
        notes = [
            "# %s from %s" % (MESSAGE_TYPES[int(code)], header[0]),
            *("# " + l for l in header[1:]),
            "# PACKET_AUXDATA tp_status 0x%08x: TP_STATUS_CSUMNOTREADY clear, the UDP checksum is"
            % status,
            "# complete (tx checksum offload was off on the server veth: ethtool -K veth-s tx off).",
        ]
        with open("%s/%s-%s.hex" % (out_dir, kind, name), "w") as f:
            f.write("\n".join(notes + annotate(frame)) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        capture(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        write(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
PY

# Two namespaces joined by a veth pair, the server end addressed and with tx
# checksum offload off, so that the frames we capture carry the checksum the
# wire would (a veth otherwise hands over CHECKSUM_PARTIAL frames whose UDP
# checksum is only the pseudo-header sum).
make_net() {
    SRV="mirage-cap-srv-$1-$ID"
    CLI="mirage-cap-cli-$1-$ID"
    NAMESPACES+=("$CLI" "$SRV")
    ip netns add "$SRV"
    ip netns add "$CLI"
    ip -n "$SRV" link add veth-s type veth peer name veth-c netns "$CLI"
    ip -n "$SRV" addr add "$SERVER_IP/24" dev veth-s
    ip -n "$SRV" link set veth-s up
    # Kea opens no socket on a link without carrier: bring the peer up too.
    ip -n "$CLI" link set veth-c up
    ip netns exec "$SRV" ethtool -K veth-s tx off >/dev/null
}

# Capture on the client veth, run the client once, write the fixtures.
capture_with_client() {
    local kind=$1
    rm -f "$TMP/ready"
    ip netns exec "$CLI" python3 "$TMP/pcap.py" capture veth-c "$TMP/$kind.json" "$TMP/ready" 30 &
    local cap=$!
    for _ in $(seq 200); do [ -e "$TMP/ready" ] && break; sleep 0.05; done
    [ -e "$TMP/ready" ] || { echo "capture-fixtures.sh: capture did not start" >&2; exit 1; }
    ip netns exec "$CLI" "$BIN" run --interface veth-c --oneshot --no-acd --timeout 20 \
        --state-dir "$TMP/$kind-state" --run-dir "$TMP/$kind-run" --resolv-conf "$TMP/$kind-resolv.conf" \
        2>"$TMP/$kind-client.log" || { cat "$TMP/$kind-client.log" >&2; exit 1; }
    wait "$cap"
    mkdir -p "$OUT"
    python3 "$TMP/pcap.py" write "$TMP/$kind.json" "$kind" "$OUT" "$TMP/$kind-header"
    echo "captured $OUT/$kind-offer.hex $OUT/$kind-ack.hex"
}

# ---------------------------------------------------------------- dnsmasq
make_net dnsmasq
DNSMASQ_ARGS=(--keep-in-foreground --conf-file=/dev/null --port=0
    --bind-interfaces --interface=veth-s --except-interface=lo --no-ping
    "--dhcp-range=$POOL_LO,$POOL_HI,255.255.255.0,$LEASE_SECS"
    "--dhcp-leasefile=\$TMP/dnsmasq.leases"
    "--dhcp-option=option:router,$SERVER_IP"
    "--dhcp-option=option:dns-server,${DNS//, /,}"
    "--dhcp-option=option:domain-search,${SEARCH//, /,}"
    "--dhcp-option=option:mtu,$MTU"
    "--dhcp-option=option:ntp-server,$NTP"
    "--dhcp-option=option:classless-static-route,$ROUTES_DNSMASQ")
{
    echo "$(dnsmasq --version | head -1 | sed 's/ *Copyright.*//') (Debian dnsmasq-base $(dpkg-query -W -f='${Version}' dnsmasq-base 2>/dev/null || echo '?'))"
    echo "captured on the client veth by scripts/capture-fixtures.sh while"
    echo "\`mirage-dhcp run --interface veth-c --oneshot --no-acd\` ran; \$TMP is the script's scratch dir:"
    echo "dnsmasq ${DNSMASQ_ARGS[*]}"
} > "$TMP/dnsmasq-header"
ip netns exec "$SRV" dnsmasq "${DNSMASQ_ARGS[@]//\$TMP/$TMP}" 2>"$TMP/dnsmasq.log" &
disown
for _ in $(seq 200); do ip netns exec "$SRV" ss -lun | grep -q ':67 ' && break; sleep 0.05; done
ip netns exec "$SRV" ss -lun | grep -q ':67 ' || { cat "$TMP/dnsmasq.log" >&2; exit 1; }
capture_with_client dnsmasq

# ---------------------------------------------------------------- Kea
make_net kea
# Kea 2.2 knows option 121 only as binary data: the RFC 3442 bytes. T1/T2
# are computed (calculate-tee-times: 0.5 and 0.875 of the lease, RFC 2131
# 4.4.5) so that Kea sends options 58 and 59 as dnsmasq does by default.
KEA_CONF=$(cat <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["veth-s"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "name": "\$TMP/kea.leases", "lfc-interval": 0},
  "valid-lifetime": $LEASE_SECS, "min-valid-lifetime": $LEASE_SECS, "max-valid-lifetime": $LEASE_SECS,
  "subnet4": [{
    "id": 1, "subnet": "192.0.2.0/24", "pools": [{"pool": "$POOL_LO - $POOL_HI"}],
    "calculate-tee-times": true,
    "option-data": [
      {"name": "routers", "data": "$SERVER_IP"},
      {"name": "domain-name-servers", "data": "$DNS"},
      {"name": "interface-mtu", "data": "$MTU"},
      {"name": "domain-search", "data": "$SEARCH"},
      {"name": "ntp-servers", "data": "$NTP"},
      {"code": 121, "csv-format": false, "data": "$ROUTES_HEX"}
    ]
  }],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}]
}}
EOF
)
printf '%s\n' "${KEA_CONF//\$TMP/$TMP}" > "$TMP/kea.conf"
{
    echo "Kea kea-dhcp4 $(kea-dhcp4 -v) (Debian kea-dhcp4-server $(dpkg-query -W -f='${Version}' kea-dhcp4-server 2>/dev/null || echo '?'))"
    echo "captured on the client veth by scripts/capture-fixtures.sh while"
    echo "\`mirage-dhcp run --interface veth-c --oneshot --no-acd\` ran; \$TMP is the script's scratch dir:"
    echo "kea-dhcp4 -c kea.conf, where kea.conf is:"
    printf '%s\n' "$KEA_CONF"
} > "$TMP/kea-header"
# Kea keeps its lock and pid files where these say.
KEA_LOCKFILE_DIR="$TMP" KEA_PIDFILE_DIR="$TMP" ip netns exec "$SRV" kea-dhcp4 -c "$TMP/kea.conf" >"$TMP/kea.log" 2>&1 &
disown
for _ in $(seq 400); do grep -q DHCP4_STARTED "$TMP/kea.log" && break; sleep 0.05; done
if ! grep -q DHCP4_STARTED "$TMP/kea.log" || grep -q DHCPSRV_NO_SOCKETS_OPEN "$TMP/kea.log"; then
    cat "$TMP/kea.log" >&2
    exit 1
fi
capture_with_client kea
