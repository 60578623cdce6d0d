//! The route table as requests read it: port → host (exact, wildcard, any) → ordered matches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::request::Parts;

use crate::identity::ResolvedIdentity;
use crate::model::{AllowedRoutes, MatchModel, Model, ObjKey};

use super::action::RuleAction;
use super::matching::{self, HostKey, Precedence};
use super::status::{ListenerStatus, RouteParentStatus};
use super::target::ServiceTarget;

#[derive(Debug)]
pub(super) struct Entry {
    pub matcher: MatchModel,
    pub precedence: Precedence,
    pub action: Arc<RuleAction>,
    /// The listener hostname (index in [`PortTable::listener_hosts`]) the route attached
    /// through.
    pub listener: u16,
}

/// Everything served on one port.
#[derive(Debug, Default)]
pub struct PortTable {
    /// `namespace/gateway/listener` names bound to this port.
    pub listeners: Vec<String>,
    /// The distinct hostnames of the port's listeners (exact, wildcard, none).
    listener_hosts: Vec<HostKey>,
    exact: HashMap<String, Vec<Entry>>,
    /// Longest suffix first.
    wildcard: Vec<(HostKey, Vec<Entry>)>,
    any: Vec<Entry>,
}

/// A matched rule, and the `PathPrefix` of the match that took the request (when it was one).
pub type Routed<'a> = (&'a Arc<RuleAction>, Option<&'a str>);

fn first<'a>(entries: &'a [Entry], req: &Parts, listener: Option<u16>) -> Option<Routed<'a>> {
    entries
        .iter()
        .find(|e| listener.is_none_or(|l| e.listener == l) && matching::matches(&e.matcher, req))
        .map(|e| {
            let prefix = match &e.matcher.path {
                crate::model::PathMatch::Prefix(p) => Some(p.as_str()),
                _ => None,
            };
            (&e.action, prefix)
        })
}

impl PortTable {
    /// The rule for a request, by host (exact, then wildcard, then catch-all) and then by
    /// match precedence.
    ///
    /// Listener isolation (the Gateway API's): a request belongs to the most specific
    /// listener whose hostname covers its host, and only the routes attached through that
    /// listener may take it, never a less specific listener's.
    pub fn route(&self, host: &str, req: &Parts) -> Option<Routed<'_>> {
        let listener = if self.listener_hosts.len() > 1 {
            Some(self.listener_for(host)?)
        } else {
            None
        };
        if let Some(found) = self.exact.get(host).and_then(|e| first(e, req, listener)) {
            return Some(found);
        }
        for (key, entries) in &self.wildcard {
            if key.covers(host) {
                if let Some(found) = first(entries, req, listener) {
                    return Some(found);
                }
            }
        }
        first(&self.any, req, listener)
    }

    /// The most specific listener hostname covering `host`: exact, then the longest wildcard,
    /// then a listener without hostname.
    fn listener_for(&self, host: &str) -> Option<u16> {
        let rank = |k: &HostKey| match k {
            HostKey::Exact(_) => usize::MAX,
            HostKey::Wildcard(s) => s.len(),
            HostKey::Any => 0,
        };
        self.listener_hosts
            .iter()
            .enumerate()
            .filter(|(_, k)| k.covers(host))
            .max_by_key(|(_, k)| rank(k))
            .map(|(i, _)| i as u16)
    }

    /// The index of a listener hostname, added when new.
    pub(super) fn listener_index(&mut self, hostname: Option<&str>) -> u16 {
        let key = hostname.map_or(HostKey::Any, HostKey::parse);
        match self.listener_hosts.iter().position(|k| *k == key) {
            Some(i) => i as u16,
            None => {
                self.listener_hosts.push(key);
                (self.listener_hosts.len() - 1) as u16
            }
        }
    }

    pub(super) fn insert(&mut self, key: HostKey, entry: Entry) {
        let list = match key {
            HostKey::Exact(h) => self.exact.entry(h).or_default(),
            HostKey::Wildcard(_) => match self.wildcard.iter().position(|(k, _)| *k == key) {
                Some(i) => &mut self.wildcard[i].1,
                None => {
                    self.wildcard.push((key, Vec::new()));
                    &mut self.wildcard.last_mut().expect("just pushed").1
                }
            },
            HostKey::Any => &mut self.any,
        };
        list.push(entry);
    }

    pub(super) fn finish(&mut self) {
        for list in self.exact.values_mut() {
            list.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        }
        self.wildcard.sort_by(|(a, _), (b, _)| match (a, b) {
            (HostKey::Wildcard(x), HostKey::Wildcard(y)) => y.len().cmp(&x.len()).then(x.cmp(y)),
            _ => a.cmp(b),
        });
        for (_, list) in &mut self.wildcard {
            list.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        }
        self.any.sort_by(|a, b| a.precedence.cmp(&b.precedence));
    }

    /// Hosts with routes, for `check` and logs.
    pub fn hosts(&self) -> Vec<String> {
        let mut out: Vec<String> = self.exact.keys().cloned().collect();
        out.sort();
        out.extend(self.wildcard.iter().map(|(k, _)| match k {
            HostKey::Wildcard(s) => format!("*{s}"),
            other => format!("{other:?}"),
        }));
        if !self.any.is_empty() {
            out.push("*".into());
        }
        out
    }
}

/// The whole routing state at one moment.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub generation: u64,
    pub identity: ResolvedIdentity,
    pub ports: BTreeMap<u16, PortTable>,
    pub services: BTreeMap<(ObjKey, u16), Arc<ServiceTarget>>,
    /// The Gateways served, and each HTTPRoute parentRef's outcome (Gateway API status).
    pub gateways: Vec<ObjKey>,
    pub route_status: Vec<RouteParentStatus>,
    /// Each listener of the served Gateways, for `status.listeners`.
    pub listener_status: Vec<ListenerStatus>,
    pub warnings: Vec<String>,
    /// Other networks' traffic, when this gateway takes it (`--east-west-port`).
    pub east_west: Option<EastWest>,
}

/// The hop header: set by a gateway sending to another network's east-west gateway, it names
/// the destination (`namespace/name:port`); the receiving gateway sends the request to that
/// Service's endpoints in its own cluster only, so east-west traffic never travels on.
pub const EAST_WEST_HEADER: &str = "x-locus-east-west";

/// The east-west listener's routing: hop header value → the action that sends to that
/// Service port's endpoints in this cluster (none of other clusters or networks).
#[derive(Debug, Default)]
pub struct EastWest {
    pub port: u16,
    pub by_destination: std::collections::HashMap<String, Arc<super::action::RuleAction>>,
}

/// Which Gateways this instance serves.
#[derive(Clone, Debug, Default)]
pub enum GatewaySelector {
    /// Every Gateway in the resources (file mode: the user pointed us at them).
    #[default]
    All,
    One(ObjKey),
    /// Gateways of this `gatewayClassName` (cluster mode).
    Class(String),
}

impl GatewaySelector {
    /// The listener ports of the Gateways selected in `model`: what a table built from it
    /// serves (bound before the table is published).
    pub fn listener_ports(&self, model: &Model) -> Vec<u16> {
        let mut ports: Vec<u16> = model
            .gateways
            .iter()
            .filter(|g| self.selects(g))
            .flat_map(|g| g.listeners.iter().map(|l| l.port))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    pub fn selects(&self, gw: &crate::model::GatewayModel) -> bool {
        match self {
            GatewaySelector::All => true,
            GatewaySelector::One(k) => *k == gw.key,
            // The GatewayClass's controllerName decides when the class is known (a class of
            // another controller is never served, whatever its name); the name alone when not
            // (files without GatewayClasses, clusters that have not created it).
            GatewaySelector::Class(c) => match &gw.controller {
                Some(controller) => controller == crate::model::CONTROLLER_NAME,
                None => *c == gw.class,
            },
        }
    }
}

pub(super) fn namespace_allowed(
    model: &Model,
    allowed: &AllowedRoutes,
    gateway_ns: &str,
    route_ns: &str,
) -> bool {
    match allowed {
        AllowedRoutes::Same => gateway_ns == route_ns,
        AllowedRoutes::All => true,
        AllowedRoutes::Selector(want) => {
            let labels = model.namespaces.get(route_ns);
            want.iter().all(|(k, v)| {
                labels.and_then(|l| l.get(k)) == Some(v)
                    || (k == "kubernetes.io/metadata.name" && v == route_ns)
            })
        }
    }
}
