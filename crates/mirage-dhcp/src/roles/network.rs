//! The network role: moves frames between the AF_PACKET socket (opened and
//! filtered by the supervisor, fd 4) and the engine, with no capabilities.
//! Outbound frames are checked here, because the engine may be compromised:
//! our source MAC, IPv4 UDP 68 -> 67 or ARP from our MAC, bounded size.

use std::os::fd::AsFd;

use mirage_ipc::{FromNetwork, MAX_FRAME_LEN, ToNetwork};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::packet::{PacketSocket, check_outbound};

use super::{FD_CHANNEL, FD_PACKET, RoleArgs};

pub fn run(args: &RoleArgs) -> Result<(), String> {
    let chan = Channel::from_raw_fd(FD_CHANNEL).map_err(|e| format!("channel: {e}"))?;
    let sock = PacketSocket::from_raw_fd(FD_PACKET).map_err(|e| format!("packet socket: {e}"))?;
    super::sandbox::enter(args, super::sandbox::Profile::Network)?;
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    loop {
        let ready = wait_readable(&[chan.as_fd(), sock.as_fd()], None).map_err(|e| format!("poll: {e}"))?;
        if ready[1] {
            match sock.recv(&mut buf) {
                Ok(r) if r.truncated => log::debug!("dropped an oversized frame"),
                Ok(r) => {
                    let msg = FromNetwork::Frame {
                        data: buf[..r.len].to_vec(),
                        checksum_offloaded: r.checksum_offloaded,
                    };
                    chan.send(&msg).map_err(|e| format!("send: {e}"))?;
                }
                Err(e) => log::warn!("receive: {e}"),
            }
        }
        if ready[0] {
            match chan.recv::<ToNetwork>() {
                Ok(Some(ToNetwork::Transmit(frame))) => match check_outbound(&frame, args.mac) {
                    Ok(()) => {
                        if let Err(e) = sock.send(&frame) {
                            log::warn!("send: {e}");
                        }
                    }
                    Err(why) => {
                        log::warn!("refused an outbound frame: {}", why.as_str());
                        let msg = FromNetwork::Refused {
                            reason: why.as_str().to_string(),
                        };
                        chan.send(&msg).map_err(|e| format!("send: {e}"))?;
                    }
                },
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            }
        }
    }
}
