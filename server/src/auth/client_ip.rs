//! End-user addresses as logins are throttled by: parsed, IPv4-mapped IPv6 taken as IPv4, and
//! IPv6 counted per /64 (the block one subscriber usually holds), so one source cannot pass for
//! many by rewriting its address; and how many password hashes one source may have in flight.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use parking_lot::Mutex;

use crate::keys::{InvalidId, validate_id};

/// The request field addresses arrive in.
const FIELD: &str = "client_ip";

/// A parsed client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIp {
    /// The address in its canonical text (`10.9.9.9` for `::ffff:10.9.9.9`), for sessions and
    /// the audit log.
    pub address: String,
    /// What throttles count by: the IPv4 address, or the IPv6 address's /64.
    pub network: String,
}

/// `raw` as a client address; `None` when empty (the caller knows no address), and
/// INVALID_ARGUMENT naming `client_ip` when it is not an IP address (`010.9.9.9` and
/// `10.9.9.9 ` are not).
pub fn parse_client_ip(raw: &str) -> Result<Option<ClientIp>, InvalidId> {
    validate_id(FIELD, raw, false)?;
    if raw.is_empty() {
        return Ok(None);
    }
    let ip: IpAddr = raw.parse().map_err(|_| InvalidId {
        field: FIELD.to_owned(),
        reason: "is not an IP address".to_owned(),
    })?;
    let ip = ip.to_canonical();
    let network = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    };
    Ok(Some(ClientIp {
        address: ip.to_string(),
        network,
    }))
}

/// Logins in flight (queued for or holding a hashing permit) per client network, so no single
/// source holds more than its share of the hashing permits and the queue stays open to others.
/// An entry lives only while its logins do, so the map is bounded by the calls in flight.
#[derive(Debug, Default)]
pub struct InFlightByNetwork {
    /// Network → logins in flight.
    counts: Mutex<HashMap<String, usize>>,
}

impl InFlightByNetwork {
    /// A slot for one login from `network` when it has fewer than `share` in flight; the slot
    /// is given back when dropped.
    pub fn try_take(&self, network: &str, share: usize) -> Option<InFlightSlot<'_>> {
        let mut counts = self.counts.lock();
        let count = counts.entry(network.to_owned()).or_default();
        if *count >= share {
            if *count == 0 {
                counts.remove(network);
            }
            return None;
        }
        *count += 1;
        Some(InFlightSlot {
            owner: self,
            network: network.to_owned(),
        })
    }
}

/// One login's place in [`InFlightByNetwork`].
#[derive(Debug)]
pub struct InFlightSlot<'a> {
    /// The counts to give the slot back to.
    owner: &'a InFlightByNetwork,
    /// Whose slot it is.
    network: String,
}

impl Drop for InFlightSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock();
        if let Some(count) = counts.get_mut(&self.network) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(raw: &str) -> String {
        parse_client_ip(raw).unwrap().unwrap().network
    }

    #[test]
    fn one_source_is_one_network() {
        assert_eq!(network("10.9.9.9"), "10.9.9.9");
        assert_eq!(network("::ffff:10.9.9.9"), "10.9.9.9");
        assert_eq!(
            parse_client_ip("::ffff:10.9.9.9").unwrap().unwrap().address,
            "10.9.9.9"
        );
        assert_eq!(network("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            network("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(network("2001:db8:1:3::1"), network("2001:db8:1:2::1"));
        assert_eq!(parse_client_ip("").unwrap(), None);
    }

    #[test]
    fn a_network_holds_at_most_its_share() {
        let in_flight = InFlightByNetwork::default();
        let a = in_flight.try_take("10.0.0.1", 2).unwrap();
        let b = in_flight.try_take("10.0.0.1", 2).unwrap();
        assert!(in_flight.try_take("10.0.0.1", 2).is_none());
        assert!(
            in_flight.try_take("10.0.0.2", 2).is_some(),
            "others are not held back"
        );
        drop(a);
        let c = in_flight.try_take("10.0.0.1", 2);
        assert!(c.is_some());
        drop((b, c));
        assert!(
            in_flight.counts.lock().is_empty(),
            "entries leave with their logins"
        );
        assert!(in_flight.try_take("10.0.0.3", 0).is_none());
        assert!(in_flight.counts.lock().is_empty());
    }

    #[test]
    fn anything_else_names_the_field() {
        for raw in [
            "10.9.9.9 ",
            "010.9.9.9",
            "10.9.9",
            "host.example",
            "10.9.9.9/32",
            "1.2.3.4\n",
        ] {
            let e = parse_client_ip(raw).unwrap_err();
            assert_eq!(e.field, "client_ip", "{raw:?}");
        }
    }
}
