//! Localities (`region/zone/subzone`) and how two of them relate.

use std::fmt;
use std::str::FromStr;

/// Where a workload runs: `region/zone/subzone`, each level optional from the right.
///
/// The format is Istio's (`WorkloadEntry.spec.locality`, the `LOCALITY` variable of
/// agentgateway). An empty string means "unknown".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalityError {
    #[error("locality {0:?} has more than three levels (expected region/zone/subzone)")]
    TooManyLevels(String),
    #[error("locality {0:?} has an empty level (expected region/zone/subzone, e.g. us-east1/us-east1-b)")]
    EmptyLevel(String),
    #[error("locality {input:?} has an invalid character {ch:?} (letters, digits, '-', '_' and '.' only)")]
    BadChar { input: String, ch: char },
}

impl Locality {
    pub fn new(region: &str, zone: &str, subzone: &str) -> Self {
        Locality {
            region: region.to_owned(),
            zone: zone.to_owned(),
            subzone: subzone.to_owned(),
        }
    }

    /// Parses `region`, `region/zone` or `region/zone/subzone`. The empty string is the
    /// unknown locality.
    pub fn parse(input: &str) -> Result<Self, LocalityError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Ok(Locality::default());
        }
        let parts: Vec<&str> = trimmed.split('/').collect();
        if parts.len() > 3 {
            return Err(LocalityError::TooManyLevels(input.to_owned()));
        }
        for part in &parts {
            if part.is_empty() {
                return Err(LocalityError::EmptyLevel(input.to_owned()));
            }
            if let Some(ch) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err(LocalityError::BadChar {
                    input: input.to_owned(),
                    ch,
                });
            }
        }
        Ok(Locality {
            region: parts[0].to_owned(),
            zone: parts.get(1).copied().unwrap_or_default().to_owned(),
            subzone: parts.get(2).copied().unwrap_or_default().to_owned(),
        })
    }

    pub fn is_unknown(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Same region: both regions known and equal.
    pub fn same_region(&self, other: &Locality) -> bool {
        !self.region.is_empty() && self.region == other.region
    }

    /// Same zone. A zone only matches within the same region (Istio: "proxies in the same zone
    /// but different regions are not considered local to one another"). When one side's region
    /// is unknown — an EndpointSlice endpoint whose Node is not known carries only `zone` — the
    /// zone names alone decide, as kube-proxy does for `PreferClose`: cloud zone names embed
    /// their region (`us-east-1a`), so this only matters for hand-made names.
    pub fn same_zone(&self, other: &Locality) -> bool {
        if self.zone.is_empty() || self.zone != other.zone {
            return false;
        }
        self.region == other.region || self.region.is_empty() || other.region.is_empty()
    }

    /// Same subzone: same zone and both subzones known and equal.
    pub fn same_subzone(&self, other: &Locality) -> bool {
        self.same_zone(other) && !self.subzone.is_empty() && self.subzone == other.subzone
    }

    /// How `other` relates to `self`, without node information.
    pub fn relation(&self, other: &Locality) -> Relation {
        if self.same_subzone(other) {
            Relation::SameSubzone
        } else if self.same_zone(other) {
            Relation::SameZone
        } else if self.same_region(other) {
            Relation::SameRegion
        } else {
            Relation::CrossRegion
        }
    }
}

impl FromStr for Locality {
    type Err = LocalityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Locality::parse(s)
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unknown() {
            return f.write_str("<unknown>");
        }
        f.write_str(&self.region)?;
        if !self.zone.is_empty() || !self.subzone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        if !self.subzone.is_empty() {
            write!(f, "/{}", self.subzone)?;
        }
        Ok(())
    }
}

/// How close an endpoint is to the gateway, from closest to farthest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Relation {
    SameNode,
    SameSubzone,
    SameZone,
    SameRegion,
    CrossRegion,
}

impl Relation {
    /// The label used in metrics (`locality_relation`). A same-subzone endpoint is in the same
    /// zone as far as transfer pricing goes.
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::SameNode => "same-node",
            Relation::SameSubzone | Relation::SameZone => "same-zone",
            Relation::SameRegion => "same-region",
            Relation::CrossRegion => "cross-region",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `locality` fuzz target: the empty string parses to the unknown locality,
    /// which prints as `<unknown>` (for logs), not as something that parses back. Every known
    /// locality prints back to itself.
    #[test]
    fn printing_round_trips_except_for_the_unknown_locality() {
        let unknown = Locality::parse("").unwrap();
        assert!(unknown.is_unknown());
        assert_eq!(unknown.to_string(), "<unknown>");
        assert!(Locality::parse("<unknown>").is_err());
        for s in ["r", "r/z", "r/z/s", " us-east-1/us-east-1a ", "a.b_c-d"] {
            let l = Locality::parse(s).unwrap();
            assert_eq!(Locality::parse(&l.to_string()).unwrap(), l, "{s:?}");
        }
    }

    #[test]
    fn parses_full_and_partial_forms() {
        assert_eq!(
            Locality::parse("us-east1/us-east1-b/rack7").unwrap(),
            Locality::new("us-east1", "us-east1-b", "rack7")
        );
        assert_eq!(
            Locality::parse("region/zone").unwrap(),
            Locality::new("region", "zone", "")
        );
        assert_eq!(
            Locality::parse("region").unwrap(),
            Locality::new("region", "", "")
        );
        assert!(Locality::parse("").unwrap().is_unknown());
        assert!(Locality::parse("  ").unwrap().is_unknown());
    }

    #[test]
    fn rejects_bad_strings() {
        assert!(matches!(
            Locality::parse("a/b/c/d"),
            Err(LocalityError::TooManyLevels(_))
        ));
        assert!(matches!(
            Locality::parse("a//c"),
            Err(LocalityError::EmptyLevel(_))
        ));
        assert!(matches!(
            Locality::parse("/zone"),
            Err(LocalityError::EmptyLevel(_))
        ));
        assert!(matches!(
            Locality::parse("region/"),
            Err(LocalityError::EmptyLevel(_))
        ));
        assert!(matches!(
            Locality::parse("reg ion/zone"),
            Err(LocalityError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Locality::parse("us-central1/*"),
            Err(LocalityError::BadChar { ch: '*', .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in ["r", "r/z", "r/z/s"] {
            assert_eq!(Locality::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Locality::default().to_string(), "<unknown>");
    }

    #[test]
    fn zone_matches_only_within_the_same_region() {
        let gw = Locality::new("region", "zone", "");
        assert!(gw.same_zone(&Locality::new("region", "zone", "")));
        assert!(!gw.same_zone(&Locality::new("other-region", "zone", "")));
        assert_eq!(
            gw.relation(&Locality::new("other-region", "zone", "")),
            Relation::CrossRegion
        );
        assert_eq!(
            gw.relation(&Locality::new("region", "other-zone", "")),
            Relation::SameRegion
        );
        assert_eq!(
            gw.relation(&Locality::new("region", "zone", "")),
            Relation::SameZone
        );
    }

    #[test]
    fn unknown_region_compares_zone_names_only() {
        let gw = Locality::new("region", "zone-a", "");
        assert!(gw.same_zone(&Locality::new("", "zone-a", "")));
        assert!(!gw.same_zone(&Locality::new("", "zone-b", "")));
        assert!(!gw.same_region(&Locality::new("", "zone-b", "")));
    }

    #[test]
    fn subzone_needs_both_sides_known() {
        let gw = Locality::new("r", "z", "s1");
        assert_eq!(
            gw.relation(&Locality::new("r", "z", "s1")),
            Relation::SameSubzone
        );
        assert_eq!(
            gw.relation(&Locality::new("r", "z", "s2")),
            Relation::SameZone
        );
        assert_eq!(
            gw.relation(&Locality::new("r", "z", "")),
            Relation::SameZone
        );
        let unknown = Locality::default();
        assert_eq!(
            unknown.relation(&Locality::new("r", "z", "")),
            Relation::CrossRegion
        );
    }
}
