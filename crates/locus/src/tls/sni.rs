//! Which listener of an HTTPS port a name belongs to, and the certificate a handshake gets.
//!
//! The Gateway API's rule: the most specific listener hostname wins — an exact name, then the
//! longest wildcard (`*.example.com` covers `a.example.com` and `a.b.example.com`, not
//! `example.com`), then a listener without a hostname. The same rule picks the listener for a
//! request's Host, so a request whose Host belongs to another listener than its connection's
//! SNI gets 421 Misdirected Request.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One HTTPS listener as handshakes see it.
#[derive(Debug)]
pub struct SniListener {
    /// `namespace/gateway/listener`.
    pub name: String,
    pub hostname: Option<String>,
    /// Its usable certificates, in the order of its `certificateRefs`.
    pub certs: Vec<Arc<CertifiedKey>>,
}

#[derive(Debug)]
pub struct SniResolver {
    listeners: Vec<SniListener>,
}

impl SniResolver {
    pub fn new(listeners: Vec<SniListener>) -> Self {
        SniResolver { listeners }
    }

    /// The listener `name` belongs to (`None`: no SNI / no Host). Without a name, the listener
    /// without a hostname, else the first one, answers.
    pub fn listener_for(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self
                .listeners
                .iter()
                .position(|l| l.hostname.is_none())
                .or((!self.listeners.is_empty()).then_some(0));
        };
        let name = name.trim_end_matches('.');
        let mut best: Option<(usize, usize)> = None; // (specificity, index)
        for (i, l) in self.listeners.iter().enumerate() {
            let rank = match &l.hostname {
                Some(h) if h.eq_ignore_ascii_case(name) => usize::MAX,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix)
                        if name.len() > suffix.len()
                            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix) =>
                    {
                        suffix.len() + 1
                    }
                    _ => continue,
                },
                None => 0,
            };
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, i));
            }
        }
        best.map(|(_, i)| i)
    }

    pub fn listeners(&self) -> &[SniListener] {
        &self.listeners
    }

    pub fn listener_name(&self, i: usize) -> &str {
        &self.listeners[i].name
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let l = &self.listeners[self.listener_for(hello.server_name())?];
        // The first certificate whose key can sign with a scheme the client offers (RSA and
        // ECDSA side by side on one listener).
        let offered = hello.signature_schemes();
        l.certs
            .iter()
            .find(|c| c.key.choose_scheme(offered).is_some())
            .or(l.certs.first())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(hosts: &[Option<&str>]) -> SniResolver {
        SniResolver::new(
            hosts
                .iter()
                .map(|h| SniListener {
                    name: format!("{h:?}"),
                    hostname: h.map(str::to_owned),
                    certs: Vec::new(),
                })
                .collect(),
        )
    }

    #[test]
    fn the_most_specific_listener_wins() {
        let r = resolver(&[
            None,
            Some("*.example.com"),
            Some("*.a.example.com"),
            Some("www.example.com"),
        ]);
        assert_eq!(r.listener_for(Some("www.example.com")), Some(3));
        assert_eq!(r.listener_for(Some("WWW.Example.com.")), Some(3));
        assert_eq!(r.listener_for(Some("x.a.example.com")), Some(2));
        assert_eq!(r.listener_for(Some("x.example.com")), Some(1));
        assert_eq!(r.listener_for(Some("x.y.example.com")), Some(1));
        assert_eq!(r.listener_for(Some("example.com")), Some(0));
        assert_eq!(r.listener_for(Some("other.test")), Some(0));
        assert_eq!(r.listener_for(None), Some(0));
        let r = resolver(&[Some("a.test"), Some("*.b.test")]);
        assert_eq!(r.listener_for(Some("c.test")), None);
        assert_eq!(r.listener_for(Some("b.test")), None);
        assert_eq!(r.listener_for(None), Some(0));
    }
}
