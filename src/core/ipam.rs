//! Address ranges and subnets, pure and exact: parsing what users write in a ServiceGroup,
//! sizes as exact integers (a /64 has 2^64 addresses, the whole IPv6 space 2^128, nothing
//! wraps), containment and overlap, and the validation of a group's pools with errors that
//! name the field and the value.
//!
//! Entry points: [`AddressRange::parse`], [`Subnet::parse`], [`parse_pool_spec`],
//! [`find_overlap`].

use std::{
    cmp::Ordering,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::api::{AddressPool, PoolSpec};

pub mod special;
mod usage;
pub use usage::{RangeUsage, TakeError, lowest_free_by_scan};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    #[must_use]
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// Address width in bits (32 or 128).
    #[must_use]
    pub fn bits(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// `IPv4` or `IPv6`, as used in names such as `purelb.io/announcing-IPv4`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn max_value(self) -> u128 {
        match self {
            Self::V4 => u128::from(u32::MAX),
            Self::V6 => u128::MAX,
        }
    }

    fn address(self, value: u128) -> IpAddr {
        match self {
            // Only called with values <= max_value(V4), so the conversion cannot fail.
            Self::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
            Self::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address as an unsigned integer in its family's space.
#[must_use]
pub fn ip_value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A number of addresses, exact from 0 to 2^128 inclusive. Sums saturate at 2^128 (the size of
/// the IPv6 space, which no set of disjoint ranges can exceed) and differences at 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressCount {
    /// 1 only for exactly 2^128 (then `low` is 0).
    high: u8,
    low: u128,
}

impl AddressCount {
    /// Zero addresses.
    pub const ZERO: Self = Self { high: 0, low: 0 };

    /// A count that fits in a `u128`.
    #[must_use]
    pub fn new(n: u128) -> Self {
        Self { high: 0, low: n }
    }

    /// `last - first + 1` without overflow.
    #[must_use]
    fn span(first: u128, last: u128) -> Self {
        let diff = last - first;
        match diff.checked_add(1) {
            Some(n) => Self::new(n),
            None => Self { high: 1, low: 0 },
        }
    }

    /// Sum, saturating at 2^128.
    #[must_use]
    pub fn saturating_add(self, other: Self) -> Self {
        let (low, carry) = self.low.overflowing_add(other.low);
        let high = self.high + other.high + u8::from(carry);
        if high >= 1 && (high > 1 || low > 0) { Self { high: 1, low: 0 } } else { Self { high, low } }
    }

    /// Difference, saturating at 0 (counts are never negative).
    #[must_use]
    pub fn saturating_sub(self, other: Self) -> Self {
        if other >= self {
            return Self::ZERO;
        }
        let (low, borrow) = self.low.overflowing_sub(other.low);
        Self { high: self.high - other.high - u8::from(borrow), low }
    }

    /// The count as `u128`, or `None` for 2^128.
    #[must_use]
    pub fn to_u128(self) -> Option<u128> {
        (self.high == 0).then_some(self.low)
    }
}

impl From<u64> for AddressCount {
    fn from(n: u64) -> Self {
        Self::new(u128::from(n))
    }
}

impl fmt::Display for AddressCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.high == 1 { f.write_str("340282366920938463463374607431768211456") } else { write!(f, "{}", self.low) }
    }
}

/// A CIDR subnet, stored as its network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a subnet or range text could not be parsed (without the field name; see [`PoolError`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntaxError {
    /// Not an address, CIDR or `from-to` range at all.
    NotARange,
    /// Not a CIDR.
    NotACidr,
    /// The prefix length is longer than the family allows.
    PrefixTooLong { len: u32, family: Family },
    /// The two ends are of different families.
    MixedFamilies,
    /// The first address is greater than the last.
    Reversed,
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8), SyntaxError> {
    let (addr, len) = text.trim().split_once('/').ok_or(SyntaxError::NotACidr)?;
    let ip = parse_ip(addr).ok_or(SyntaxError::NotACidr)?;
    let len_text = len.trim();
    if len_text.is_empty() || len_text.len() > 3 || !len_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SyntaxError::NotACidr);
    }
    let len: u32 = len_text.parse().map_err(|_| SyntaxError::NotACidr)?;
    let family = Family::of(ip);
    if len > u32::from(family.bits()) {
        return Err(SyntaxError::PrefixTooLong { len, family });
    }
    // len <= 128 here.
    Ok((ip, u8::try_from(len).unwrap_or(128)))
}

fn host_mask(family: Family, prefix_len: u8) -> u128 {
    let host_bits = u32::from(family.bits() - prefix_len);
    if host_bits == 0 { 0 } else { family.max_value() >> (u32::from(family.bits()) - host_bits) }
}

impl Subnet {
    /// Parses a CIDR such as `192.0.2.0/24` or `2001:db8::/64`. Host bits are allowed and
    /// dropped (`192.0.2.7/24` is `192.0.2.0/24`); surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// [`SyntaxError::NotACidr`] or [`SyntaxError::PrefixTooLong`].
    pub fn parse(text: &str) -> Result<Self, SyntaxError> {
        let (ip, prefix_len) = parse_cidr(text)?;
        Ok(Self::new(ip, prefix_len))
    }

    /// The subnet of `prefix_len` bits containing `ip` (the length is capped at the family's width).
    #[must_use]
    pub fn new(ip: IpAddr, prefix_len: u8) -> Self {
        let family = Family::of(ip);
        let prefix_len = prefix_len.min(family.bits());
        let network = family.address(ip_value(ip) & !host_mask(family, prefix_len));
        Self { network, prefix_len }
    }

    /// The network address.
    #[must_use]
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The family.
    #[must_use]
    pub fn family(&self) -> Family {
        Family::of(self.network)
    }

    /// Every address of the subnet as a range.
    #[must_use]
    pub fn range(&self) -> AddressRange {
        let family = self.family();
        let first = ip_value(self.network);
        let last = first | host_mask(family, self.prefix_len);
        AddressRange { family, first, last }
    }

    /// Whether the subnet contains `ip`.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range().contains(ip)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// A non-empty, inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressRange {
    family: Family,
    first: u128,
    last: u128,
}

impl AddressRange {
    /// Parses a pool as users write it: a CIDR (`192.0.2.240/28`: the written address up to
    /// the end of that prefix) or a range `from-to` (both ends inclusive). Surrounding
    /// whitespace, also around the `-`, is ignored.
    ///
    /// # Errors
    ///
    /// A [`SyntaxError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, SyntaxError> {
        let text = text.trim();
        if let Some((from, to)) = text.split_once('-') {
            let from = parse_ip(from).ok_or(SyntaxError::NotARange)?;
            let to = parse_ip(to).ok_or(SyntaxError::NotARange)?;
            return Self::from_ends(from, to);
        }
        if text.contains('/') {
            let (ip, prefix_len) = parse_cidr(text).map_err(|e| match e {
                SyntaxError::NotACidr => SyntaxError::NotARange,
                other => other,
            })?;
            let end = Subnet::new(ip, prefix_len).range().last;
            return Ok(Self { family: Family::of(ip), first: ip_value(ip), last: end });
        }
        let ip = parse_ip(text).ok_or(SyntaxError::NotARange)?;
        Ok(Self::single(ip))
    }

    /// The range `first..=last`.
    ///
    /// # Errors
    ///
    /// [`SyntaxError::MixedFamilies`] or [`SyntaxError::Reversed`].
    pub fn from_ends(first: IpAddr, last: IpAddr) -> Result<Self, SyntaxError> {
        let family = Family::of(first);
        if family != Family::of(last) {
            return Err(SyntaxError::MixedFamilies);
        }
        let (first, last) = (ip_value(first), ip_value(last));
        if first > last {
            return Err(SyntaxError::Reversed);
        }
        Ok(Self { family, first, last })
    }

    /// The range holding only `ip`.
    #[must_use]
    pub fn single(ip: IpAddr) -> Self {
        let v = ip_value(ip);
        Self { family: Family::of(ip), first: v, last: v }
    }

    /// The family.
    #[must_use]
    pub fn family(&self) -> Family {
        self.family
    }

    /// The first address.
    #[must_use]
    pub fn first(&self) -> IpAddr {
        self.family.address(self.first)
    }

    /// The last address.
    #[must_use]
    pub fn last(&self) -> IpAddr {
        self.family.address(self.last)
    }

    /// The first and last address as integers in the family's space.
    #[must_use]
    pub fn bounds(&self) -> (u128, u128) {
        (self.first, self.last)
    }

    /// The address at `offset` from the first, if inside the range.
    #[must_use]
    pub fn nth(&self, offset: u128) -> Option<IpAddr> {
        let v = self.first.checked_add(offset)?;
        (v <= self.last).then(|| self.family.address(v))
    }

    /// Exact number of addresses.
    #[must_use]
    pub fn size(&self) -> AddressCount {
        AddressCount::span(self.first, self.last)
    }

    /// Whether `ip` lies in the range.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.first..=self.last).contains(&ip_value(ip))
    }

    /// Whether every address of `other` lies in this range.
    #[must_use]
    pub fn contains_range(&self, other: &Self) -> bool {
        self.family == other.family && self.first <= other.first && other.last <= self.last
    }

    /// Whether the two ranges share at least one address.
    #[must_use]
    pub fn overlaps(&self, other: &Self) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }
}

impl PartialOrd for AddressRange {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AddressRange {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.family, self.first, self.last).cmp(&(other.family, other.first, other.last))
    }
}

impl fmt::Display for AddressRange {
    /// A whole aligned block prints as a CIDR, anything else as `first-last`; both parse back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for len in 0..=self.family.bits() {
            let block = Subnet::new(self.first(), len).range();
            if block == *self {
                return write!(f, "{}/{len}", self.first());
            }
        }
        write!(f, "{}-{}", self.first(), self.last())
    }
}

/// A validation failure in a pool spec. Every message names the field path and the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// `pool` is not an address, CIDR or range.
    #[error(
        "{field}: {value:?} is not an address range: write a CIDR such as 192.0.2.240/28 or a range such as 192.0.2.10-192.0.2.20"
    )]
    NotARange { field: String, value: String },
    /// `subnet` is not a CIDR.
    #[error("{field}: {value:?} is not a subnet: write a CIDR such as 192.0.2.0/24 or 2001:db8::/64")]
    NotASubnet { field: String, value: String },
    /// A prefix length longer than the family allows.
    #[error("{field}: {value:?} has prefix length /{len}, longer than {family} allows (at most /{max})", max = family.bits())]
    PrefixTooLong { field: String, value: String, len: u32, family: Family },
    /// The ends of a range are of different families.
    #[error("{field}: {value:?} mixes IPv4 and IPv6: both ends of a range must be of the same family")]
    MixedFamilies { field: String, value: String },
    /// `from` is greater than `to`.
    #[error("{field}: {value:?} is reversed: write the lower address first")]
    Reversed { field: String, value: String },
    /// The pool and its subnet are of different families.
    #[error("{field}: {value:?} is {pool_family} but its subnet {subnet:?} is {subnet_family}")]
    SubnetFamily { field: String, value: String, pool_family: Family, subnet: String, subnet_family: Family },
    /// The pool is not inside its subnet.
    #[error("{field}: {value:?} is not inside its subnet {subnet:?}: the subnet must contain the whole pool")]
    OutsideSubnet { field: String, value: String, subnet: String },
    /// A range in the list of the other family.
    #[error("{field}: {value:?} is an {family} range in {list}: move it to {right_list}")]
    WrongFamilyList { field: String, value: String, family: Family, list: String, right_list: String },
    /// `aggregation` is not `default` or `/N`, or too long for the family.
    #[error("{field}: {value:?} is not a valid aggregation for an {family} pool: write \"default\" or \"/N\" with N from 0 to {max}", max = family.bits())]
    BadAggregation { field: String, value: String, family: Family },
    /// No range in the whole spec.
    #[error("{field} has no address ranges: add at least one of v4pools, v6pools, v4pool, v6pool")]
    NoRanges { field: String },
    /// Every address of the range is one that is never handed out.
    #[error(
        "{field}: {value:?} holds only addresses that are never handed out ({why}): use addresses of the node's network, e.g. documentation or private ranges"
    )]
    OnlyReserved { field: String, value: String, why: String },
    /// Two ranges share addresses.
    #[error("{field}: {value:?} overlaps {other_field} {other_value:?}{other_group}: ranges must not share addresses", other_group = other_group.as_ref().map(|g| format!(" of ServiceGroup {g}")).unwrap_or_default())]
    Overlap {
        field: String,
        value: String,
        other_field: String,
        other_value: String,
        /// `namespace/name` when the other range is in another group.
        other_group: Option<String>,
    },
}

/// A validated range of a pool spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRange {
    /// Field path of the AddressPool, e.g. `spec.local.v4pools[0]`.
    pub field: String,
    /// The `pool` text as written.
    pub text: String,
    /// The addresses.
    pub range: AddressRange,
    /// The subnet containing the range.
    pub subnet: Subnet,
    /// Prefix length for the dummy interface (`aggregation`, else the subnet's).
    pub aggregation: u8,
}

/// Addresses of a written range that are never handed out (special-purpose, or the network
/// and broadcast address of a `local` pool's IPv4 subnet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Field path of the `pool`, e.g. `spec.local.v4pool.pool`.
    pub field: String,
    /// The `pool` text as written.
    pub text: String,
    /// The skipped addresses.
    pub range: AddressRange,
    /// What they are.
    pub why: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {} ({})", self.field, self.text, self.range, self.why)
    }
}

/// A validated pool spec: ranges per family in the order they are tried. A written range
/// that contains addresses never handed out becomes the usable parts around them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedPools {
    /// IPv4 ranges: `v4pools`, then `v4pool`.
    pub v4: Vec<ParsedRange>,
    /// IPv6 ranges: `v6pools`, then `v6pool`.
    pub v6: Vec<ParsedRange>,
    /// `balancePools`.
    pub balance: bool,
    /// `skipIPv6DAD`.
    pub skip_ipv6_dad: bool,
    /// Addresses of the written ranges that are never handed out.
    pub skipped: Vec<Skipped>,
}

impl ParsedPools {
    /// The ranges of one family.
    #[must_use]
    pub fn family(&self, family: Family) -> &[ParsedRange] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// All ranges, IPv4 first.
    pub fn all(&self) -> impl Iterator<Item = &ParsedRange> {
        self.v4.iter().chain(&self.v6)
    }

    /// Why `ip` is skipped by this spec, when it is.
    #[must_use]
    pub fn skipped_reason(&self, ip: IpAddr) -> Option<&str> {
        self.skipped.iter().find(|s| s.range.contains(ip)).map(|s| s.why.as_str())
    }

    /// Total addresses of one family.
    #[must_use]
    pub fn size(&self, family: Family) -> AddressCount {
        self.family(family).iter().fold(AddressCount::ZERO, |acc, r| acc.saturating_add(r.range.size()))
    }
}

/// Parses an `aggregation` value for a pool of `family`: `None`/`default` means `default_len`.
///
/// # Errors
///
/// [`PoolError::BadAggregation`] naming `field`.
pub fn parse_aggregation(field: &str, value: Option<&str>, family: Family, default_len: u8) -> Result<u8, PoolError> {
    let bad =
        || PoolError::BadAggregation { field: field.to_owned(), value: value.unwrap_or_default().to_owned(), family };
    match value.map(str::trim) {
        None | Some("" | "default") => Ok(default_len),
        Some(text) => {
            let digits = text.strip_prefix('/').ok_or_else(bad)?;
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let len: u8 = digits.parse().map_err(|_| bad())?;
            if len > family.bits() {
                return Err(bad());
            }
            Ok(len)
        }
    }
}

fn parse_address_pool(field: &str, pool: &AddressPool) -> Result<ParsedRange, PoolError> {
    let pool_field = format!("{field}.pool");
    let subnet_field = format!("{field}.subnet");
    let value = pool.pool.clone();
    let range = AddressRange::parse(&pool.pool).map_err(|e| match e {
        SyntaxError::NotARange | SyntaxError::NotACidr => {
            PoolError::NotARange { field: pool_field.clone(), value: value.clone() }
        }
        SyntaxError::PrefixTooLong { len, family } => {
            PoolError::PrefixTooLong { field: pool_field.clone(), value: value.clone(), len, family }
        }
        SyntaxError::MixedFamilies => PoolError::MixedFamilies { field: pool_field.clone(), value: value.clone() },
        SyntaxError::Reversed => PoolError::Reversed { field: pool_field.clone(), value: value.clone() },
    })?;
    let subnet = Subnet::parse(&pool.subnet).map_err(|e| match e {
        SyntaxError::PrefixTooLong { len, family } => {
            PoolError::PrefixTooLong { field: subnet_field.clone(), value: pool.subnet.clone(), len, family }
        }
        _ => PoolError::NotASubnet { field: subnet_field.clone(), value: pool.subnet.clone() },
    })?;
    if subnet.family() != range.family() {
        return Err(PoolError::SubnetFamily {
            field: pool_field,
            value,
            pool_family: range.family(),
            subnet: pool.subnet.clone(),
            subnet_family: subnet.family(),
        });
    }
    if !subnet.range().contains_range(&range) {
        return Err(PoolError::OutsideSubnet { field: pool_field, value, subnet: pool.subnet.clone() });
    }
    let aggregation = parse_aggregation(
        &format!("{field}.aggregation"),
        pool.aggregation.as_deref(),
        range.family(),
        subnet.prefix_len(),
    )?;
    Ok(ParsedRange { field: field.to_owned(), text: pool.pool.clone(), range, subnet, aggregation })
}

/// Validates a `local` or `remote` pool spec found at field path `base` (e.g. `spec.local`):
/// every rule of `api.md` §1 AddressPool except overlaps with other groups (see
/// [`find_overlap`]). Overlaps inside the spec are checked here.
///
/// # Errors
///
/// The first [`PoolError`] found, in field order.
pub fn parse_pool_spec(base: &str, spec: &PoolSpec) -> Result<ParsedPools, PoolError> {
    let mut parsed = ParsedPools {
        balance: spec.balance_pools.unwrap_or(false),
        skip_ipv6_dad: spec.skip_ipv6_dad.unwrap_or(false),
        ..ParsedPools::default()
    };
    let lists: [(Family, &str, FieldPools<'_>); 2] = [
        (Family::V4, "v4", indexed(base, "v4pools", spec.v4pools.as_deref(), "v4pool", spec.v4pool.as_ref())),
        (Family::V6, "v6", indexed(base, "v6pools", spec.v6pools.as_deref(), "v6pool", spec.v6pool.as_ref())),
    ];
    for (family, prefix, entries) in lists {
        for (field, pool) in entries {
            let range = parse_address_pool(&field, pool)?;
            if range.range.family() != family {
                let list = field.rsplit_once('.').map_or(field.as_str(), |(_, l)| l);
                let list = list.split('[').next().unwrap_or(list).to_owned();
                let right_list = list.replacen(prefix, if family == Family::V4 { "v6" } else { "v4" }, 1);
                return Err(PoolError::WrongFamilyList {
                    field: format!("{field}.pool"),
                    value: pool.pool.clone(),
                    family: range.range.family(),
                    list,
                    right_list,
                });
            }
            let local = base.ends_with("local");
            let (usable, skipped) = special::split(&range.range, &range.subnet, local);
            if usable.is_empty() {
                let why: Vec<String> = skipped.iter().map(|(_, why)| why.clone()).collect();
                return Err(PoolError::OnlyReserved {
                    field: format!("{field}.pool"),
                    value: pool.pool.clone(),
                    why: why.join(", "),
                });
            }
            parsed.skipped.extend(skipped.into_iter().map(|(r, why)| Skipped {
                field: format!("{field}.pool"),
                text: pool.pool.clone(),
                range: r,
                why,
            }));
            let list = match family {
                Family::V4 => &mut parsed.v4,
                Family::V6 => &mut parsed.v6,
            };
            list.extend(usable.into_iter().map(|part| ParsedRange { range: part, ..range.clone() }));
        }
    }
    if parsed.v4.is_empty() && parsed.v6.is_empty() {
        return Err(PoolError::NoRanges { field: base.to_owned() });
    }
    let own: Vec<&ParsedRange> = parsed.all().collect();
    if let Some(err) = find_overlap(&own, &[]) {
        return Err(err);
    }
    Ok(parsed)
}

/// Address pools with their field paths.
type FieldPools<'a> = Vec<(String, &'a AddressPool)>;

fn indexed<'a>(
    base: &str,
    list_name: &str,
    list: Option<&'a [AddressPool]>,
    single_name: &str,
    single: Option<&'a AddressPool>,
) -> FieldPools<'a> {
    let mut out: FieldPools<'a> =
        list.unwrap_or_default().iter().enumerate().map(|(i, p)| (format!("{base}.{list_name}[{i}]"), p)).collect();
    if let Some(p) = single {
        out.push((format!("{base}.{single_name}"), p));
    }
    out
}

/// Finds the first range of `candidates` (in their order) that overlaps another candidate
/// or any range of `existing` (ranges of earlier groups, with the group's `namespace/name`).
/// Runs in O(n log n) for n ranges in all.
#[must_use]
pub fn find_overlap(candidates: &[&ParsedRange], existing: &[(&str, &ParsedRange)]) -> Option<PoolError> {
    // (range, candidate index or None, group)
    let mut all: Vec<(AddressRange, Option<usize>, Option<&str>, &ParsedRange)> = candidates
        .iter()
        .enumerate()
        .map(|(i, r)| (r.range, Some(i), None, *r))
        .chain(existing.iter().map(|(g, r)| (r.range, None, Some(*g), *r)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.is_some().cmp(&b.1.is_some())));
    // For each candidate that overlaps something, remember the other party; report the
    // candidate that comes first in field order so the message is stable.
    let mut hits: Vec<(usize, &ParsedRange, Option<&str>)> = Vec::new();
    let mut reach: Option<(AddressRange, Option<usize>, Option<&str>, &ParsedRange)> = None;
    for item in &all {
        if let Some(prev) = reach.filter(|p| p.0.overlaps(&item.0)) {
            match (item.1, prev.1) {
                (Some(i), Some(j)) => {
                    let (late, early) = if i > j { (i, prev.3) } else { (j, item.3) };
                    hits.push((late, early, None));
                }
                (Some(i), None) => hits.push((i, prev.3, prev.2)),
                (None, Some(j)) => hits.push((j, item.3, item.2)),
                (None, None) => {}
            }
        }
        let extends = reach.is_none_or(|p| p.0.family() != item.0.family() || item.0.bounds().1 > p.0.bounds().1);
        if extends {
            reach = Some(*item);
        }
    }
    let (i, other, group) = hits.into_iter().min_by_key(|h| h.0)?;
    let me = candidates.get(i)?;
    Some(PoolError::Overlap {
        field: format!("{}.pool", me.field),
        value: me.text.clone(),
        other_field: format!("{}.pool", other.field),
        other_value: other.text.clone(),
        other_group: group.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests;
