//! Name resolution with [hickory-resolver](https://docs.rs/hickory-resolver), per address
//! family, with a time limit on every lookup.
//!
//! A [`Resolver`] answers in this order:
//!
//! 1. IP literals (`1.2.3.4`, `::1`, `[::1]`) are returned as they are, with no lookup.
//! 2. `localhost` and names under it (`foo.localhost`) are always the loopback addresses
//!    `::1` and `127.0.0.1`, answered locally without any query (RFC 6761 section 6.3),
//!    whatever the hosts file says.
//! 3. A name listed in the hosts file is answered from the hosts file alone, like the
//!    `files` source of the C library's resolver: a name listed only with an IPv4 address
//!    has no IPv6 address, and no DNS query is sent for it.
//! 4. Anything else is asked of the upstream name servers (those of `/etc/resolv.conf` for
//!    [`Resolver::system`]), if there are any.
//!
//! A resolver never falls back to a public DNS server: with no usable system configuration
//! it has no upstream servers, and only IP literals, `localhost` and the hosts file work.
//!
//! When both families are wanted, IPv6 addresses come first, then IPv4: this is the order
//! of the default address selection policy (RFC 6724 section 2.1) and of Happy Eyeballs
//! (RFC 8305). Callers that must not depend on IPv6 working should try every address, or ask
//! for one family.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};

use crate::addr::{self, Af, Target};
use crate::error::Error;

/// The time limit [`resolve`] puts on a lookup.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A DNS resolver: hickory's tokio resolver plus a hosts file, answering per address family.
///
/// Cloning is cheap (one reference count): clones share the cache and connections.
///
/// The resolver's background work runs on the tokio runtime that drives its lookups. A
/// resolver whose upstream connections were opened on one runtime should not be used from
/// another runtime after the first has shut down; make one resolver per runtime in that
/// case. Lookups that need no query (IP literals, `localhost`, hosts file) work anywhere.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    /// Hickory's resolver, or `None` when there are no upstream name servers.
    upstream: Option<TokioResolver>,
    /// How many upstream name servers there are (for `Debug`).
    servers: usize,
    /// The hosts file, read once when the resolver was built.
    hosts: Hosts,
    /// Where the hosts entries came from (for `Debug`).
    hosts_source: HostsSource,
}

/// Where a resolver's hosts entries come from.
#[derive(Clone, Debug, Default)]
enum HostsSource {
    /// The system's hosts file (`/etc/hosts` on Unix).
    #[default]
    System,
    /// A given file.
    File(PathBuf),
    /// No hosts entries.
    None,
}

impl HostsSource {
    fn load(&self) -> Result<Hosts, Error> {
        match self {
            HostsSource::System => Ok(Hosts::from_system().unwrap_or_else(|e| {
                tracing::debug!("system hosts file not read: {e}");
                Hosts::default()
            })),
            HostsSource::File(path) => read_hosts_file(path),
            HostsSource::None => Ok(Hosts::default()),
        }
    }
}

fn read_hosts_file(path: &Path) -> Result<Hosts, Error> {
    let setup = |e: std::io::Error| {
        Error::ResolverSetup(format!("cannot read hosts file {}: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(setup)?;
    let mut hosts = Hosts::default();
    hosts.read_hosts_conf(file).map_err(setup)?;
    Ok(hosts)
}

/// Builds hickory's resolver; hosts are handled by [`Resolver`] itself, never by hickory.
fn build_upstream(config: ResolverConfig, mut opts: ResolverOpts) -> Result<TokioResolver, Error> {
    opts.use_hosts_file = ResolveHosts::Never;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| Error::ResolverSetup(e.to_string()))
}

impl Resolver {
    /// The system's resolver configuration: name servers, search domains and options from
    /// `/etc/resolv.conf` (the registry on Windows), and the system hosts file.
    ///
    /// If the configuration cannot be read or lists no name servers, the resolver has no
    /// upstream servers (as [`Resolver::with_hosts_only`]): IP literals, `localhost` and the
    /// hosts file still work. It never falls back to a public DNS server.
    ///
    /// Both files are read once, now.
    ///
    /// # Errors
    ///
    /// [`Error::ResolverSetup`] if hickory refuses the configuration it read.
    pub fn system() -> Result<Resolver, Error> {
        let hosts_source = HostsSource::System;
        let hosts = hosts_source.load()?;
        let (upstream, servers) = match hickory_resolver::system_conf::read_system_conf() {
            Ok((config, opts)) if !config.name_servers().is_empty() => {
                let servers = config.name_servers().len();
                (Some(build_upstream(config, opts)?), servers)
            }
            Ok(_) => {
                tracing::warn!("system resolver configuration lists no name servers; resolving from the hosts file only");
                (None, 0)
            }
            Err(e) => {
                tracing::warn!("cannot read system resolver configuration ({e}); resolving from the hosts file only");
                (None, 0)
            }
        };
        Ok(Resolver::from_parts(upstream, servers, hosts, hosts_source))
    }

    /// A resolver with no upstream name servers: IP literals, `localhost` and the system
    /// hosts file only. A missing or unreadable hosts file counts as empty.
    pub fn with_hosts_only() -> Resolver {
        let hosts_source = HostsSource::System;
        let hosts = hosts_source.load().unwrap_or_default();
        Resolver::from_parts(None, 0, hosts, hosts_source)
    }

    /// A resolver with no upstream name servers whose hosts entries come from `path` (in
    /// `/etc/hosts` format) instead of the system hosts file.
    ///
    /// # Errors
    ///
    /// [`Error::ResolverSetup`] if the file cannot be read.
    pub fn from_hosts_file(path: impl AsRef<Path>) -> Result<Resolver, Error> {
        Resolver::builder().hosts_file(path.as_ref()).build()
    }

    /// A builder for a resolver with explicit name servers and hosts file.
    pub fn builder() -> ResolverBuilder {
        ResolverBuilder::default()
    }

    fn from_parts(
        upstream: Option<TokioResolver>,
        servers: usize,
        hosts: Hosts,
        hosts_source: HostsSource,
    ) -> Resolver {
        Resolver {
            inner: Arc::new(Inner {
                upstream,
                servers,
                hosts,
                hosts_source,
            }),
        }
    }

    /// Whether this resolver has upstream name servers to ask.
    pub fn has_upstream(&self) -> bool {
        self.inner.upstream.is_some()
    }

    /// Looks up the IP addresses of `host`, of one family or (with `None`) of both.
    ///
    /// `host` is an IP literal (`1.2.3.4`, `::1` or `[::1]`), returned at once without a
    /// lookup, or a host name (validated as for [`Target::parse`]). `localhost` is answered
    /// locally; a name in the hosts file is answered from it; other names are asked of the
    /// upstream servers: only `A` records for [`Af::V4`], only `AAAA` for [`Af::V6`], both
    /// at once for `None`, with IPv6 addresses first. The whole lookup, search domains and
    /// retries included, must end within `timeout`.
    ///
    /// The result is never empty and has no duplicates.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidTarget`]: `host` is neither an IP literal nor a valid host name.
    /// - [`Error::NoAddress`]: the name is known, but has no address of the wanted family
    ///   (an IP literal of the other family is also this).
    /// - [`Error::NotFound`]: the name does not exist (NXDOMAIN, or unknown to a resolver
    ///   without upstream servers), or has no address of either family.
    /// - [`Error::ResolveTimeout`]: no answer within `timeout`.
    /// - [`Error::Resolve`]: the name servers failed (refused, server failure, I/O ...).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Dropping the future abandons the lookup and leaves the
    /// resolver fully usable; queries already sent may still be answered and cached.
    pub async fn lookup(
        &self,
        host: &str,
        family: Option<Af>,
        timeout: Duration,
    ) -> Result<Vec<IpAddr>, Error> {
        if let Some(ip) = ip_literal(host) {
            return only_family(host, vec![ip], family);
        }
        addr::validate_hostname(host)?;
        if is_localhost(host) {
            let loopback = vec![Af::V6.loopback(), Af::V4.loopback()];
            return only_family(host, loopback, family);
        }
        match tokio::time::timeout(timeout, self.lookup_name(host, family)).await {
            Ok(result) => result,
            Err(_) => Err(Error::ResolveTimeout {
                host: host.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Resolves a target to socket addresses of one family or (with `None`) of both.
    ///
    /// A [`Target::Addr`] is returned as it is (no lookup) if its family fits; a
    /// [`Target::Host`] is looked up with [`Resolver::lookup`] and each address gets the
    /// target's port.
    ///
    /// # Errors
    ///
    /// As [`Resolver::lookup`]; a [`Target::Addr`] of the other family gives
    /// [`Error::NoAddress`].
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`Resolver::lookup`] is.
    pub async fn resolve(
        &self,
        target: &Target,
        family: Option<Af>,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, Error> {
        match target {
            Target::Addr(a) => match family {
                Some(f) if Af::of_socket(a) != f => Err(Error::NoAddress {
                    host: a.ip().to_string(),
                    family: f,
                }),
                _ => Ok(vec![*a]),
            },
            Target::Host { host, port } => Ok(self
                .lookup(host, family, timeout)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, *port))
                .collect()),
        }
    }

    /// The part of [`Resolver::lookup`] for a validated name that is not `localhost`.
    async fn lookup_name(&self, host: &str, family: Option<Af>) -> Result<Vec<IpAddr>, Error> {
        let name = Name::from_ascii(host).map_err(|_| Error::InvalidTarget {
            input: host.to_owned(),
            reason: "not a valid dns name",
        })?;

        // The hosts file: a listed name is answered from it alone.
        let from_hosts = |rtype| {
            self.inner
                .hosts
                .lookup_static_host(&Query::query(name.clone(), rtype))
        };
        let (aaaa, a) = (from_hosts(RecordType::AAAA), from_hosts(RecordType::A));
        if aaaa.is_some() || a.is_some() {
            let ips = [aaaa, a]
                .iter()
                .flatten()
                .flat_map(|l| l.answers().iter().filter_map(|r| r.data.ip_addr()))
                .collect();
            return only_family(host, ips, family);
        }

        let Some(dns) = &self.inner.upstream else {
            return Err(Error::NotFound {
                host: host.to_owned(),
            });
        };

        match family {
            Some(af) => {
                match query(dns, name, af).await {
                    Ok(ips) => only_family(host, ips, family),
                    // NODATA: the name exists, with no record of this type.
                    Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
                        only_family(host, Vec::new(), family)
                    }
                    Err(e) => Err(upstream_error(host, e)),
                }
            }
            None => {
                let (v6, v4) =
                    tokio::join!(query(dns, name.clone(), Af::V6), query(dns, name, Af::V4));
                let mut ips = Vec::new();
                let mut failure = None;
                for result in [v6, v4] {
                    match result {
                        Ok(found) => ips.extend(found),
                        Err(e) if e.is_no_records_found() => {}
                        Err(e) => {
                            tracing::debug!("lookup of {host:?}: {e}");
                            failure.get_or_insert(e);
                        }
                    }
                }
                match failure {
                    Some(e) if ips.is_empty() => Err(upstream_error(host, e)),
                    _ => only_family(host, ips, None),
                }
            }
        }
    }
}

/// One `A` or `AAAA` query through hickory (search domains and retries included).
async fn query(dns: &TokioResolver, name: Name, af: Af) -> Result<Vec<IpAddr>, NetError> {
    let lookup = match af {
        Af::V4 => dns.ipv4_lookup(name).await?,
        Af::V6 => dns.ipv6_lookup(name).await?,
    };
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .filter(|ip| Af::of(ip) == af)
        .collect())
}

/// Maps an upstream failure: NXDOMAIN is [`Error::NotFound`], anything else
/// [`Error::Resolve`]. (NODATA, an empty answer, is handled by the caller.)
fn upstream_error(host: &str, e: NetError) -> Error {
    if e.is_nx_domain() {
        Error::NotFound {
            host: host.to_owned(),
        }
    } else {
        Error::Resolve {
            host: host.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// Keeps the addresses of `family` (all for `None`), without duplicates, in order.
fn only_family(host: &str, ips: Vec<IpAddr>, family: Option<Af>) -> Result<Vec<IpAddr>, Error> {
    let mut kept: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if family.is_none_or(|f| Af::of(&ip) == f) && !kept.contains(&ip) {
            kept.push(ip);
        }
    }
    if !kept.is_empty() {
        return Ok(kept);
    }
    Err(match family {
        Some(family) => Error::NoAddress {
            host: host.to_owned(),
            family,
        },
        None => Error::NotFound {
            host: host.to_owned(),
        },
    })
}

/// An IP literal: `1.2.3.4`, `::1` or `[::1]`.
fn ip_literal(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(host) {
        return Some(ip);
    }
    let inner = host.strip_prefix('[')?.strip_suffix(']')?;
    Ipv6Addr::from_str(inner).ok().map(IpAddr::V6)
}

/// `localhost`, `localhost.` and names under it, in any case (RFC 6761 section 6.3).
fn is_localhost(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    let suffix = ".localhost";
    name.eq_ignore_ascii_case("localhost")
        || (name.len() > suffix.len()
            && name.is_char_boundary(name.len() - suffix.len())
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("name_servers", &self.inner.servers)
            .field("hosts", &self.inner.hosts_source)
            .finish()
    }
}

/// Builds a [`Resolver`] with explicit upstream name servers and hosts file.
///
/// By default there are no name servers and the hosts entries come from the system hosts
/// file.
///
/// ```
/// # fn main() -> Result<(), p2pipe::error::Error> {
/// let resolver = p2pipe::dns::Resolver::builder()
///     .no_hosts()
///     .name_server("127.0.0.1:5353".parse().unwrap())
///     .build()?;
/// assert!(resolver.has_upstream());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ResolverBuilder {
    hosts: HostsSource,
    name_servers: Vec<SocketAddr>,
    opts: Option<(Duration, usize)>,
}

impl ResolverBuilder {
    /// Takes hosts entries from the system hosts file (the default).
    pub fn system_hosts(mut self) -> Self {
        self.hosts = HostsSource::System;
        self
    }

    /// Takes hosts entries from `path` (in `/etc/hosts` format) instead.
    pub fn hosts_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.hosts = HostsSource::File(path.into());
        self
    }

    /// Uses no hosts entries at all.
    pub fn no_hosts(mut self) -> Self {
        self.hosts = HostsSource::None;
        self
    }

    /// Adds an upstream name server, asked over UDP (and over TCP for truncated answers).
    pub fn name_server(mut self, addr: SocketAddr) -> Self {
        self.name_servers.push(addr);
        self
    }

    /// Sets hickory's own limits: the time to wait for one answer, and how many times a
    /// query is sent. Defaults are 5 seconds and 2 attempts. [`Resolver::lookup`]'s
    /// `timeout` bounds the whole lookup regardless.
    pub fn query_limits(mut self, per_query: Duration, attempts: usize) -> Self {
        self.opts = Some((per_query, attempts));
        self
    }

    /// Builds the resolver, reading the hosts file now.
    ///
    /// # Errors
    ///
    /// [`Error::ResolverSetup`] if a hosts file given with
    /// [`hosts_file`](ResolverBuilder::hosts_file) cannot be read, or hickory refuses the
    /// configuration.
    pub fn build(self) -> Result<Resolver, Error> {
        let hosts = self.hosts.load()?;
        let servers = self.name_servers.len();
        let upstream = if self.name_servers.is_empty() {
            None
        } else {
            let servers = self
                .name_servers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for conn in &mut ns.connections {
                        conn.port = addr.port();
                    }
                    ns
                })
                .collect();
            let config = ResolverConfig::from_name_servers(servers);
            let mut opts = ResolverOpts::default();
            if let Some((per_query, attempts)) = self.opts {
                opts.timeout = per_query;
                opts.attempts = attempts;
            }
            Some(build_upstream(config, opts)?)
        };
        Ok(Resolver::from_parts(upstream, servers, hosts, self.hosts))
    }
}

/// The shared default resolver: [`Resolver::system`], made on first use.
///
/// If even that fails, the default resolver has no upstream servers (as
/// [`Resolver::with_hosts_only`]). See [`Resolver`] about using one resolver from several
/// tokio runtimes.
pub fn default_resolver() -> &'static Resolver {
    static DEFAULT: OnceLock<Resolver> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        Resolver::system().unwrap_or_else(|e| {
            tracing::warn!("{e}; resolving from the hosts file only");
            Resolver::with_hosts_only()
        })
    })
}

/// Resolves a target with the [default resolver](default_resolver) and
/// [`DEFAULT_TIMEOUT`]. See [`Resolver::resolve`].
///
/// # Errors
///
/// As [`Resolver::resolve`].
///
/// # Cancel safety
///
/// This function is cancel safe, as [`Resolver::lookup`] is.
pub async fn resolve(target: &Target, family: Option<Af>) -> Result<Vec<SocketAddr>, Error> {
    default_resolver()
        .resolve(target, family, DEFAULT_TIMEOUT)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_resolver::proto::op::{Message, ResponseCode};
    use hickory_resolver::proto::rr::{RData, Record};
    use tokio::net::UdpSocket;

    /// Every await in these tests runs under this limit.
    const LIMIT: Duration = Duration::from_secs(10);

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(LIMIT, f)
            .await
            .expect("test step took too long")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "p2pipe-dns-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const HOSTS: &str = "\
# test hosts file
192.0.2.10   both.test both-alias.test
2001:db8::10 both.test
192.0.2.11   v4only.test   # trailing comment
192.0.2.12   v4only.test
2001:db8::12 v6only.test
10.9.9.9     localhost
10.9.9.9     Mixed.Case.Test
";

    /// A resolver with no upstream servers and the fixture hosts file.
    fn hosts_resolver() -> (TempDir, Resolver) {
        let dir = TempDir::new("hosts");
        let path = dir.0.join("hosts");
        std::fs::write(&path, HOSTS).unwrap();
        let r = Resolver::from_hosts_file(&path).unwrap();
        assert!(!r.has_upstream());
        (dir, r)
    }

    async fn lookup(r: &Resolver, host: &str, family: Option<Af>) -> Result<Vec<IpAddr>, Error> {
        within(r.lookup(host, family, Duration::from_secs(2))).await
    }

    fn assert_no_address(result: Result<Vec<IpAddr>, Error>, want: Af) {
        match result {
            Err(Error::NoAddress { family, .. }) => assert_eq!(family, want),
            other => panic!("expected NoAddress({want}), got {other:?}"),
        }
    }

    fn assert_not_found(result: Result<Vec<IpAddr>, Error>) {
        match result {
            Err(Error::NotFound { .. }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ip_literals_need_no_lookup() {
        let r = Resolver::builder().no_hosts().build().unwrap();
        for (host, family, want) in [
            ("192.0.2.1", None, "192.0.2.1"),
            ("192.0.2.1", Some(Af::V4), "192.0.2.1"),
            ("2001:db8::1", None, "2001:db8::1"),
            ("2001:db8::1", Some(Af::V6), "2001:db8::1"),
            ("[2001:db8::1]", Some(Af::V6), "2001:db8::1"),
            ("::ffff:1.2.3.4", Some(Af::V6), "::ffff:1.2.3.4"),
            ("0.0.0.0", None, "0.0.0.0"),
        ] {
            assert_eq!(
                lookup(&r, host, family).await.unwrap(),
                vec![ip(want)],
                "{host}"
            );
        }
        assert_no_address(lookup(&r, "192.0.2.1", Some(Af::V6)).await, Af::V6);
        assert_no_address(lookup(&r, "2001:db8::1", Some(Af::V4)).await, Af::V4);
        assert_no_address(lookup(&r, "[::1]", Some(Af::V4)).await, Af::V4);
    }

    #[tokio::test]
    async fn ip_literals_ignore_a_silent_upstream() {
        // A literal never reaches the name server, so a zero timeout cannot fire.
        let (_server, r) = silent_upstream().await;
        let got = within(r.lookup("192.0.2.1", None, Duration::ZERO)).await;
        assert_eq!(got.unwrap(), vec![ip("192.0.2.1")]);
    }

    #[tokio::test]
    async fn localhost_per_family_offline() {
        // The hosts file maps localhost elsewhere and has no ::1: both are ignored.
        let (_dir, r) = hosts_resolver();
        let plain = Resolver::builder().no_hosts().build().unwrap();
        for r in [&r, &plain] {
            for name in [
                "localhost",
                "localhost.",
                "LocalHost",
                "app.localhost",
                "a.b.LOCALHOST.",
            ] {
                assert_eq!(
                    lookup(r, name, Some(Af::V4)).await.unwrap(),
                    vec![ip("127.0.0.1")],
                    "{name}"
                );
                assert_eq!(
                    lookup(r, name, Some(Af::V6)).await.unwrap(),
                    vec![ip("::1")],
                    "{name}"
                );
                assert_eq!(
                    lookup(r, name, None).await.unwrap(),
                    vec![ip("::1"), ip("127.0.0.1")],
                    "{name}"
                );
            }
        }
        // Not localhost names: "notlocalhost" and "localhost.example" are looked up as usual.
        assert_not_found(lookup(&plain, "notlocalhost", None).await);
        assert_not_found(lookup(&plain, "localhost.example", Some(Af::V4)).await);
    }

    #[tokio::test]
    async fn localhost_with_a_silent_upstream() {
        // localhost is answered locally: a silent name server and a zero timeout do not matter.
        let (server, r) = silent_upstream().await;
        let got = within(r.lookup("localhost", Some(Af::V6), Duration::ZERO)).await;
        assert_eq!(got.unwrap(), vec![ip("::1")]);
        assert_eq!(server.queries(), 0);
    }

    #[tokio::test]
    async fn names_from_a_hosts_file() {
        let (_dir, r) = hosts_resolver();
        let cases: &[(&str, Option<Af>, &[&str])] = &[
            ("both.test", None, &["2001:db8::10", "192.0.2.10"]),
            ("both.test.", None, &["2001:db8::10", "192.0.2.10"]),
            ("BOTH.test", None, &["2001:db8::10", "192.0.2.10"]),
            ("both.test", Some(Af::V4), &["192.0.2.10"]),
            ("both.test", Some(Af::V6), &["2001:db8::10"]),
            ("both-alias.test", None, &["192.0.2.10"]),
            ("v4only.test", None, &["192.0.2.11", "192.0.2.12"]),
            ("v4only.test", Some(Af::V4), &["192.0.2.11", "192.0.2.12"]),
            ("v6only.test", None, &["2001:db8::12"]),
            ("mixed.case.test", Some(Af::V4), &["10.9.9.9"]),
        ];
        for (host, family, want) in cases {
            let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
            assert_eq!(
                lookup(&r, host, *family).await.unwrap(),
                want,
                "{host} {family:?}"
            );
        }
        assert_no_address(lookup(&r, "v4only.test", Some(Af::V6)).await, Af::V6);
        assert_no_address(lookup(&r, "v6only.test", Some(Af::V4)).await, Af::V4);
        assert_no_address(lookup(&r, "both-alias.test", Some(Af::V6)).await, Af::V6);
        // Not in the file, and no upstream to ask.
        assert_not_found(lookup(&r, "absent.test", None).await);
        assert_not_found(lookup(&r, "absent.test", Some(Af::V4)).await);
    }

    #[tokio::test]
    async fn bad_names_are_refused() {
        let (_dir, r) = hosts_resolver();
        for host in [
            "",
            "a..b",
            "-x.test",
            "x y",
            "1.2.3",
            "host:80",
            "[::1",
            "fe80::1%2",
        ] {
            match lookup(&r, host, None).await {
                Err(Error::InvalidTarget { .. }) => {}
                other => panic!("{host:?}: expected InvalidTarget, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_hosts_file_is_a_setup_error() {
        let dir = TempDir::new("missing");
        match Resolver::from_hosts_file(dir.0.join("nope")) {
            Err(Error::ResolverSetup(msg)) => assert!(msg.contains("cannot read hosts file")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn resolve_targets() {
        let (_dir, r) = hosts_resolver();
        let t = |s: &str| Target::parse(s, None).unwrap();
        let res = |target: Target, family| {
            let r = r.clone();
            async move { within(r.resolve(&target, family, Duration::from_secs(2))).await }
        };

        assert_eq!(
            res(t("192.0.2.1:80"), None).await.unwrap(),
            vec![sa("192.0.2.1:80")]
        );
        assert_eq!(
            res(t("192.0.2.1:80"), Some(Af::V4)).await.unwrap(),
            vec![sa("192.0.2.1:80")]
        );
        assert_eq!(
            res(t("[fe80::1%2]:80"), Some(Af::V6)).await.unwrap(),
            vec![sa("[fe80::1%2]:80")]
        );
        match res(t("192.0.2.1:80"), Some(Af::V6)).await {
            Err(Error::NoAddress { family: Af::V6, .. }) => {}
            other => panic!("{other:?}"),
        }
        match res(t("[::1]:80"), Some(Af::V4)).await {
            Err(Error::NoAddress { family: Af::V4, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            res(t("both.test:443"), None).await.unwrap(),
            vec![sa("[2001:db8::10]:443"), sa("192.0.2.10:443")]
        );
        assert_eq!(
            res(t("localhost:7"), Some(Af::V4)).await.unwrap(),
            vec![sa("127.0.0.1:7")]
        );
        match res(t("v4only.test:1"), Some(Af::V6)).await {
            Err(Error::NoAddress { family: Af::V6, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn free_resolve_uses_the_default_resolver() {
        // Only targets that need no query: this test must not depend on the machine's DNS.
        let target = Target::parse("[::1]:9", None).unwrap();
        assert_eq!(
            within(resolve(&target, None)).await.unwrap(),
            vec![sa("[::1]:9")]
        );
        let target = Target::parse("localhost:9", None).unwrap();
        assert_eq!(
            within(resolve(&target, Some(Af::V4))).await.unwrap(),
            vec![sa("127.0.0.1:9")]
        );
    }

    #[test]
    fn default_resolver_is_shared_and_needs_no_runtime() {
        let a = default_resolver();
        let b = default_resolver();
        assert!(std::ptr::eq(a, b));
        let _ = format!("{a:?}");
    }

    #[test]
    fn localhost_names() {
        for yes in ["localhost", "LOCALHOST.", "x.localhost", "x.y.Localhost."] {
            assert!(is_localhost(yes), "{yes}");
        }
        for no in [
            "localhost..",
            "xlocalhost",
            "localhost.x",
            "local",
            ".localhost.",
        ] {
            assert!(!is_localhost(no), "{no}");
        }
    }

    // ---- upstream on loopback -------------------------------------------------------------

    /// A UDP "name server" on 127.0.0.1 that counts queries and never answers.
    struct Silent {
        count: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Silent {
        fn queries(&self) -> usize {
            self.count.load(Ordering::SeqCst)
        }
    }

    impl Drop for Silent {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn silent_upstream() -> (Silent, Resolver) {
        let sock = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while sock.recv_from(&mut buf).await.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        let r = Resolver::builder()
            .no_hosts()
            .name_server(addr)
            .build()
            .unwrap();
        (Silent { count, task }, r)
    }

    #[tokio::test]
    async fn silent_name_server_times_out() {
        let (server, r) = silent_upstream().await;
        let after = Duration::from_millis(300);
        for family in [Some(Af::V4), Some(Af::V6), None] {
            let started = tokio::time::Instant::now();
            match within(r.lookup("silent.test", family, after)).await {
                Err(Error::ResolveTimeout { host, after: a }) => {
                    assert_eq!(host, "silent.test");
                    assert_eq!(a, after);
                }
                other => panic!("{family:?}: expected ResolveTimeout, got {other:?}"),
            }
            assert!(started.elapsed() >= after);
        }
        // The queries really went to the loopback server.
        assert!(server.queries() > 0);
    }

    /// A UDP name server on 127.0.0.1 with a fixed zone, answering A and AAAA queries.
    async fn answering_upstream() -> (tokio::task::JoinHandle<()>, Resolver) {
        let sock = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response = request.clone().into_response();
                response.metadata.recursion_available = true;
                if let Some(q) = request.queries.first() {
                    let name = q.name().to_ascii().to_ascii_lowercase();
                    let rtype = q.query_type();
                    let answers: &[&str] = match (name.as_str(), rtype) {
                        ("both.test.", RecordType::A) => &["192.0.2.20", "192.0.2.21"],
                        ("both.test.", RecordType::AAAA) => &["2001:db8::20"],
                        ("v4.test.", RecordType::A) => &["192.0.2.22"],
                        ("v4.test.", _) | ("both.test.", _) => &[],
                        ("refused.test.", _) => {
                            response.metadata.response_code = ResponseCode::Refused;
                            &[]
                        }
                        _ => {
                            response.metadata.response_code = ResponseCode::NXDomain;
                            &[]
                        }
                    };
                    for a in answers {
                        let rdata = RData::from(a.parse::<IpAddr>().unwrap());
                        response.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
                    }
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        let r = Resolver::builder()
            .no_hosts()
            .name_server(addr)
            .query_limits(Duration::from_secs(1), 1)
            .build()
            .unwrap();
        (task, r)
    }

    #[tokio::test]
    async fn answers_from_a_loopback_name_server() {
        let (task, r) = answering_upstream().await;
        let ips = |v: &[&str]| v.iter().map(|s| ip(s)).collect::<Vec<_>>();

        assert_eq!(
            lookup(&r, "both.test", None).await.unwrap(),
            ips(&["2001:db8::20", "192.0.2.20", "192.0.2.21"])
        );
        assert_eq!(
            lookup(&r, "both.test", Some(Af::V4)).await.unwrap(),
            ips(&["192.0.2.20", "192.0.2.21"])
        );
        assert_eq!(
            lookup(&r, "both.test.", Some(Af::V6)).await.unwrap(),
            ips(&["2001:db8::20"])
        );
        assert_eq!(
            lookup(&r, "v4.test", None).await.unwrap(),
            ips(&["192.0.2.22"])
        );
        // NODATA for the family.
        assert_no_address(lookup(&r, "v4.test", Some(Af::V6)).await, Af::V6);
        // NXDOMAIN.
        assert_not_found(lookup(&r, "absent.test", None).await);
        assert_not_found(lookup(&r, "absent.test", Some(Af::V4)).await);
        // A server failure is neither NotFound nor NoAddress.
        match lookup(&r, "refused.test", Some(Af::V4)).await {
            Err(Error::Resolve { host, .. }) => assert_eq!(host, "refused.test"),
            other => panic!("expected Resolve, got {other:?}"),
        }
        match lookup(&r, "refused.test", None).await {
            Err(Error::Resolve { .. }) => {}
            other => panic!("expected Resolve, got {other:?}"),
        }
        task.abort();
    }
}
