//! Bridge port isolation: functions on the bridge reach the node (the bridge itself, hence
//! the gateway and the outside world) but not each other.
//!
//! The kernel's `isolated` bridge port flag (Linux ≥ 4.18) forwards nothing between two
//! isolated ports; traffic to and from non-isolated ports and the bridge device is unchanged.
//! Every function's host-side veth is isolated right after the CNI chain adds it. This is
//! `bridge link set dev VETH isolated on`, done over rtnetlink (`RTM_SETLINK`, family
//! `AF_BRIDGE`, `IFLA_PROTINFO { IFLA_BRPORT_ISOLATED = 1 }`) so that it needs no iproute2 and
//! works in whichever network namespace the node runs (sysfs would show the wrong one).

use std::os::fd::AsRawFd as _;

use super::NetworkError;

/// `IFLA_PROTINFO` (linux/if_link.h).
const IFLA_PROTINFO: u16 = 12;
/// `IFLA_BRPORT_ISOLATED` (linux/if_link.h, since 4.18).
const IFLA_BRPORT_ISOLATED: u16 = 33;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;

fn failed(ifname: &str, what: impl std::fmt::Display) -> NetworkError {
    NetworkError::Internal(format!(
        "cannot isolate bridge port {ifname} from the other functions: {what}"
    ))
}

/// The `RTM_SETLINK` request setting `isolated` on interface `index`.
fn request(index: i32) -> Vec<u8> {
    let mut m = Vec::with_capacity(44);
    // struct nlmsghdr: length (filled in below), type, flags, sequence, port id.
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_ACK).unwrap_or(5);
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifinfomsg: family, pad, type, index, flags, change.
    m.push(u8::try_from(libc::AF_BRIDGE).unwrap_or(7));
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // IFLA_PROTINFO (nested) { IFLA_BRPORT_ISOLATED: u8 = 1 }, each attribute 4-byte aligned.
    m.extend_from_slice(&12u16.to_ne_bytes());
    m.extend_from_slice(&(IFLA_PROTINFO | NLA_F_NESTED).to_ne_bytes());
    m.extend_from_slice(&5u16.to_ne_bytes());
    m.extend_from_slice(&IFLA_BRPORT_ISOLATED.to_ne_bytes());
    m.extend_from_slice(&[1, 0, 0, 0]);
    let len = u32::try_from(m.len()).unwrap_or(44);
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// The errno of a netlink acknowledgement (0: success), `None` when `reply` is not one.
fn ack_errno(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(-i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?))
}

/// Sets the `isolated` flag on bridge port `ifname` (blocking; a few microseconds).
pub(super) fn isolate_port(ifname: &str) -> Result<(), NetworkError> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, socket,
    };
    let index = nix::net::if_::if_nametoindex(ifname).map_err(|e| failed(ifname, e))?;
    let index = i32::try_from(index).map_err(|_| failed(ifname, "interface index too large"))?;
    let socket = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| failed(ifname, e))?;
    // An unbound netlink socket sends to the kernel (port 0).
    send(socket.as_raw_fd(), &request(index), MsgFlags::empty()).map_err(|e| failed(ifname, e))?;
    let mut reply = [0u8; 1024];
    let received =
        recv(socket.as_raw_fd(), &mut reply, MsgFlags::empty()).map_err(|e| failed(ifname, e))?;
    match ack_errno(&reply[..received.min(reply.len())]) {
        Some(0) => Ok(()),
        Some(errno) => Err(failed(ifname, std::io::Error::from_raw_os_error(errno))),
        None => Err(failed(ifname, "the kernel sent no acknowledgement")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_well_formed_setlink() {
        let m = request(42);
        assert_eq!(m.len(), 44);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 44);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 19);
        assert_eq!(m[16], 7, "AF_BRIDGE");
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 42);
        assert_eq!(
            u16::from_ne_bytes(m[34..36].try_into().unwrap()),
            12 | 0x8000
        );
        assert_eq!(u16::from_ne_bytes(m[38..40].try_into().unwrap()), 33);
        assert_eq!(m[40], 1);
    }

    #[test]
    fn acknowledgements_are_read() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-19i32).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(19));
        assert_eq!(ack_errno(&ack[..10]), None);
        ack[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), None);
    }
}
