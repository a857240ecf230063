//! The outbound endpoint policy: which addresses a token request may go to. A tenant who can
//! create a TokenSource chooses its URL, so by default the operator refuses addresses inside the
//! cluster's networks and the node's own: loopback, link-local (cloud metadata services such as
//! 169.254.169.254 and fd00:ec2::254), private, shared (carrier-grade NAT), unspecified,
//! broadcast, multicast, reserved (240.0.0.0/4), benchmarking (198.18.0.0/15) and IETF protocol
//! (192.0.0.0/24) addresses, and IPv6 forms that carry one of them (mapped, IPv4-compatible,
//! NAT64, 6to4) or the local-use NAT64 prefix. Names are resolved once, every address is vetted, and the connection
//! goes only to a vetted one, so DNS rebinding cannot slip past; redirects are never followed.
//!
//! A host list (`--allow-endpoint-hosts`) means "only these hosts": an address written in the URL
//! (`https://203.0.113.7/`) is then allowed only if that address is itself listed, and it still
//! has to pass the address rules. Through a proxy (`--endpoint-proxy`) the operator does not
//! connect to the endpoint itself: the URL is checked as here, and a name is resolved and refused
//! unless every one of its addresses is allowed ([`EndpointPolicy::vet_every`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

/// Which token endpoints may be reached.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    /// Networks allowed although they are internal (an in-cluster identity provider, a test).
    pub allow_cidrs: Vec<IpNet>,
    /// When not empty, the only hosts allowed: exact names, `*.suffix`, or addresses (an
    /// address in a URL is then allowed only if it is listed).
    pub allow_hosts: Vec<String>,
}

/// A refused endpoint, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub host: String,
    pub address: Option<IpAddr>,
    pub why: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Some(a) if self.host == a.to_string() => write!(f, "{a} is {}", self.why),
            Some(a) => write!(f, "{} resolves to {a}, {}", self.host, self.why),
            None => write!(f, "{} {}", self.host, self.why),
        }?;
        f.write_str("; the operator does not send token requests there")
    }
}

impl std::error::Error for Refusal {}

/// Why an address counts as internal, if it does.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_link_local() {
        "a link-local address (such as a cloud metadata service)"
    } else if ip.is_private() {
        "a private address (RFC 1918)"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "a shared address (RFC 6598)"
    } else if o[0] == 0 {
        "an unspecified address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if o[0] >= 240 {
        "a reserved address (240.0.0.0/4)"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "a benchmarking address (198.18.0.0/15), used inside some networks"
    } else if o[..3] == [192, 0, 0] {
        "an IETF protocol address (192.0.0.0/24)"
    } else {
        return None;
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if (first & 0xffc0) == 0xfe80 {
        "a link-local address"
    } else if (first & 0xfe00) == 0xfc00 {
        "a unique local address (such as a cloud metadata service)"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.segments()[..3] == [0x0064, 0xff9b, 0x0001] {
        // Where a local NAT64 embeds the IPv4 address depends on its prefix length.
        "a local-use NAT64 address (64:ff9b:1::/48)"
    } else if ip.segments()[..6] == [0x0064, 0xff9b, 0, 0, 0, 0]
        || ip.segments()[..6] == [0; 6]
        || ip.segments()[..6] == [0, 0, 0, 0, 0xffff, 0]
    {
        // NAT64 (64:ff9b::/96), the deprecated IPv4-compatible form (::a.b.c.d) and the
        // IPv4-translated form (::ffff:0:a.b.c.d): the embedded IPv4 address decides.
        let [.., a, b] = ip.segments();
        return internal_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)));
    } else if ip.segments()[..2] == [0x2001, 0] {
        // Teredo tunnels to an IPv4 address hidden in the address: where it leads is not
        // known here.
        "a Teredo address (2001::/32)"
    } else if ip.segments()[..2] == [0x0064, 0xff9b] {
        // The rest of 64:ff9b::/32 is not assigned; reached through a NAT64 if at all.
        "an unassigned NAT64 address (64:ff9b::/32)"
    } else if first == 0x2002 {
        // 6to4: the IPv4 address in the second and third segments decides.
        let [_, a, b, ..] = ip.segments();
        return internal_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)));
    } else {
        return None;
    })
}

impl EndpointPolicy {
    /// Reads `--allow-endpoint-cidrs` and `--allow-endpoint-hosts` (comma-separated).
    pub fn parse(cidrs: &str, hosts: &str) -> Result<Self, String> {
        let allow_cidrs = cidrs
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                IpNet::from_str(c)
                    .or_else(|_| IpAddr::from_str(c).map(IpNet::from))
                    .map_err(|_| format!("{c:?} is not a CIDR such as 10.0.0.0/8 or an address"))
            })
            .collect::<Result<_, _>>()?;
        let allow_hosts = hosts.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        Ok(Self { allow_cidrs, allow_hosts })
    }

    /// Refuses an address that is internal and not explicitly allowed.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.allow_cidrs.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match internal(ip) {
            Some(why) => Err(Refusal {
                host: host.into(),
                address: Some(ip),
                why: format!("{why}, not allowed by --allow-endpoint-cidrs"),
            }),
            None => Ok(()),
        }
    }

    /// Refuses a host name outside `--allow-endpoint-hosts`, when that is set.
    pub fn check_name(&self, host: &str) -> Result<(), Refusal> {
        if let Some(ip) = listed_address(host) {
            return self.check_literal(ip);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.allow_hosts.is_empty()
            || self.allow_hosts.iter().any(|allowed| match allowed.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => *allowed == host,
            })
        {
            return Ok(());
        }
        Err(Refusal { host, address: None, why: "is not in --allow-endpoint-hosts".into() })
    }

    /// Vets an address written as the host of a URL: with a host list, only a listed address
    /// may be used; then, like any address, it must not be internal unless its network is
    /// allowed.
    pub fn check_literal(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|h| listed_address(h) == Some(ip)) {
            return Err(Refusal {
                host: ip.to_string(),
                address: None,
                why: "is not listed in --allow-endpoint-hosts (with a host list, an address in a URL must be listed itself)".into(),
            });
        }
        self.check_ip(&ip.to_string(), ip)
    }

    /// Checks a URL before anything is sent: its host name, or the address it names (an IP
    /// literal is not resolved, so it is vetted here).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refusal> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => self.check_name(name),
            None => Err(Refusal { host: String::new(), address: None, why: "has no host".into() }),
        }
    }

    /// The resolved addresses of `host` that may be connected to; a refusal if none may.
    pub fn vet(&self, host: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        let mut allowed = vec![];
        let mut first_refusal = None;
        for addr in addrs {
            match self.check_ip(host, addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some(r)) => Err(r),
            (true, None) => Err(Refusal { host: host.into(), address: None, why: "resolves to no address".into() }),
        }
    }

    /// Vets a name a proxy will resolve and connect to on its own: it may pick any of the
    /// addresses, so every one must be allowed.
    pub fn vet_every(&self, host: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Result<(), Refusal> {
        let mut none = true;
        for addr in addrs {
            self.check_ip(host, addr.ip())?;
            none = false;
        }
        if none {
            return Err(Refusal { host: host.into(), address: None, why: "resolves to no address".into() });
        }
        Ok(())
    }
}

/// The address an entry of the host list or a host names, if it is one (`[…]` around IPv6
/// allowed), as [`canonical`] gives it.
fn listed_address(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    IpAddr::from_str(bare).ok().map(canonical)
}

/// A resolver that connects only to vetted addresses.
pub struct VettingResolver {
    pub policy: Arc<EndpointPolicy>,
    /// The host of the operator's proxy (`--endpoint-proxy`), if it has one and it is a name:
    /// the operator's own choice, resolved without the policy. With a proxy, every request
    /// connects to it, and its destination is vetted before the request is sent.
    pub proxy_host: Option<String>,
}

impl reqwest::dns::Resolve for VettingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        let is_proxy = self.proxy_host.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(&host));
        Box::pin(async move {
            if is_proxy {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            policy.check_name(&host)?;
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let vetted = policy.vet(&host, addrs)?;
            Ok(Box::new(vetted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_in_every_form() {
        for a in [
            "127.0.0.1",
            "127.0.0.2",
            "::1",
            "::ffff:127.0.0.2",
            "169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "240.0.0.1",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.192",
            "::10.0.0.1",
            "::127.0.0.1",
            "64:ff9b:1::1",
            "64:ff9b:1::808:808",
            "64:ff9b:1:a00:1::",
            "64:ff9b:2::808:808",
            "::ffff:0:a00:1",
            "::ffff:0:7f00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(internal(ip(a)).is_some(), "{a} is internal");
        }
        for a in [
            "93.184.216.34",
            "2606:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
            "::ffff:8.8.8.8",
            "198.20.0.1",
            "192.0.1.1",
            "223.255.255.255",
            "2002:5db8:d822::1",
            "64:ff9b::808:808",
            "::ffff:0:808:808",
            "2001:4860::8888",
        ] {
            assert!(internal(ip(a)).is_none(), "{a} is public");
        }
        // The URL parser turns every numeric form into the address it means.
        for host in ["2130706434", "0x7f000002", "127.2", "[::ffff:127.0.0.2]"] {
            let url = url::Url::parse(&format!("https://{host}/token")).unwrap();
            assert!(EndpointPolicy::default().check_url(&url).is_err(), "{host}");
        }
    }

    #[test]
    fn allowed_networks_and_names() {
        let p = EndpointPolicy::parse("127.0.0.1/32, 10.0.0.0/8, fd00::1", "").unwrap();
        assert!(p.check_ip("x", ip("127.0.0.1")).is_ok());
        assert!(p.check_ip("x", ip("::ffff:127.0.0.1")).is_ok(), "mapped addresses are their IPv4 address");
        assert!(p.check_ip("x", ip("127.0.0.2")).is_err());
        assert!(p.check_ip("x", ip("10.9.9.9")).is_ok());
        assert!(p.check_ip("x", ip("fd00::1")).is_ok());
        assert!(EndpointPolicy::parse("not-a-cidr", "").is_err());
        let names = EndpointPolicy::parse("", "idp.example.com, *.corp.example").unwrap();
        assert!(names.check_name("idp.example.com").is_ok() && names.check_name("IDP.example.com.").is_ok());
        assert!(names.check_name("a.b.corp.example").is_ok());
        assert!(names.check_name("corp.example").is_err() && names.check_name("evil.example.com").is_err());
    }

    /// Issue 30, case 2: a host list means "only these hosts", IP-literal URLs included.
    #[test]
    fn with_a_host_list_an_address_in_the_url_must_be_listed_itself() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        let p = EndpointPolicy::parse("10.0.0.0/8", "login.example.com").unwrap();
        // 3405803783 is 203.0.113.7; 10.1.2.3 is inside an allowed network.
        for u in [
            "https://203.0.113.7/token",
            "https://3405803783/token",
            "https://[::ffff:203.0.113.7]/token",
            "https://[2001:db8::7]/token",
            "https://10.1.2.3/token",
        ] {
            let r = p.check_url(&url(u)).unwrap_err();
            assert!(r.to_string().contains("not listed in --allow-endpoint-hosts"), "{u}: {r}");
        }
        assert!(p.check_url(&url("https://login.example.com/token")).is_ok());
        // Listed, in any form, an address is allowed, and still has to pass the address rules.
        let p = EndpointPolicy::parse("", "login.example.com, 203.0.113.7, [2001:db8::7], 10.1.2.3").unwrap();
        for u in ["https://203.0.113.7/token", "https://[::ffff:203.0.113.7]/token", "https://[2001:db8::7]:8443/t"] {
            assert!(p.check_url(&url(u)).is_ok(), "{u}");
        }
        assert!(p.check_url(&url("https://203.0.113.8/token")).is_err());
        let r = p.check_url(&url("https://10.1.2.3/token")).unwrap_err();
        assert!(r.to_string().contains("a private address"), "{r}");
        // A `*.suffix` pattern matches names only.
        let p = EndpointPolicy::parse("", "*.7, *.113.7").unwrap();
        assert!(p.check_url(&url("https://203.0.113.7/token")).is_err());
        // Without a host list, an address is judged by the address rules alone.
        assert!(EndpointPolicy::default().check_url(&url("https://203.0.113.7/token")).is_ok());
        assert!(EndpointPolicy::parse("10.0.0.0/8", "").unwrap().check_url(&url("https://10.1.2.3/token")).is_ok());
    }

    #[test]
    fn through_a_proxy_every_address_of_a_name_must_be_allowed() {
        let p = EndpointPolicy::default();
        let addrs = |v: &[&str]| v.iter().map(|a| SocketAddr::new(ip(a), 443)).collect::<Vec<_>>();
        assert!(p.vet_every("public.example", addrs(&["93.184.216.34", "2606:4700::1111"])).is_ok());
        // The proxy could pick the internal one.
        let r = p.vet_every("mixed.example", addrs(&["93.184.216.34", "10.0.0.1"])).unwrap_err();
        assert_eq!(r.address, Some(ip("10.0.0.1")));
        assert!(p.vet_every("nothing.example", addrs(&[])).is_err());
    }

    #[test]
    fn a_name_is_connected_only_to_vetted_addresses() {
        let p = EndpointPolicy::default();
        let addrs = |v: &[&str]| v.iter().map(|a| SocketAddr::new(ip(a), 443)).collect::<Vec<_>>();
        assert_eq!(p.vet("mixed.example", addrs(&["10.0.0.1", "93.184.216.34"])).unwrap(), addrs(&["93.184.216.34"]));
        let r = p.vet("rebind.example", addrs(&["169.254.169.254"])).unwrap_err();
        assert_eq!(r.address, Some(ip("169.254.169.254")));
        assert!(r.to_string().contains("rebind.example resolves to 169.254.169.254, a link-local address"), "{r}");
    }
}
