//! A real Ganglia cluster on loopback: gmond A runs the `cluster_probe`
//! fixture with modpython and sends by unicast UDP to gmond B, an aggregator
//! that collects nothing itself; Debian's gmetad polls B. A's metrics, with
//! all their metadata, must reach B's XML and gmetad's XML; a spoofed metric
//! must show up under its spoofed host; and after B restarts, the metadata
//! must be sent again so the metrics come back.
//!
//! gmond sends a metric's metadata once at start, then only when a peer asks
//! or every `send_metadata_interval` seconds. A restarted B receives values it
//! has no metadata for, so there are two ways to get the metrics back, and
//! each has its test:
//!
//! * `metadata_request`: A keeps Debian's `send_metadata_interval = 0`. B has
//!   a send channel to A's receive port and asks for the metadata. (Checked:
//!   without that channel the metrics never come back; `mute = yes` on B
//!   does not stop the request.)
//! * `metadata_interval`: B is a pure listener (`mute = yes`, no send
//!   channel) and A resends its metadata every 3 seconds.

mod common;
#[path = "common/gmetad.rs"]
mod gmetad;

use common::{Gmond, GmondBuilder, Metric, Xml, free_tcp_port, free_udp_port, secs};
use gmetad::Gmetad;
use std::collections::BTreeSet;

/// The host A's metrics are filed under: the reverse lookup of 127.0.0.1.
const A_HOST: &str = "localhost";
const SPOOF_HOST: &str = "spoofed-node";
const SPOOF_IP: &str = "10.11.12.13";

#[derive(Clone, Copy, PartialEq)]
enum Resend {
    /// B asks A (B has a send channel to A's receive port).
    Request,
    /// A resends every few seconds; B only listens.
    Interval,
}

/// The aggregator: no modules and no collection groups, so it collects
/// nothing itself and its XML holds only what it received.
fn start_b(udp: u16, tcp: u16, a_udp: u16, how: Resend) -> Gmond {
    let b = GmondBuilder::new()
        .without_python_module()
        .udp_port(udp)
        .tcp_port(tcp)
        .global("deaf", "no");
    match how {
        Resend::Request => b.global("mute", "no").channels(&format!(
            "udp_recv_channel {{ bind = 127.0.0.1 port = {{udp_port}} }}\n\
                 udp_send_channel {{ host = 127.0.0.1 port = {a_udp} }}\n\
                 tcp_accept_channel {{ bind = 127.0.0.1 port = {{tcp_port}} }}"
        )),
        Resend::Interval => b.global("mute", "yes").channels(
            "udp_recv_channel { bind = 127.0.0.1 port = {udp_port} }\n\
             tcp_accept_channel { bind = 127.0.0.1 port = {tcp_port} }",
        ),
    }
    .start()
}

/// The node with Python modules: sends to B only.
fn start_a(a_udp: u16, b_udp: u16, how: Resend) -> Gmond {
    let a = GmondBuilder::new()
        .fixture("tests/fixtures/cluster")
        .udp_port(a_udp)
        .channels(&format!(
            "udp_send_channel {{ host = 127.0.0.1 port = {b_udp} }}\n\
             udp_recv_channel {{ bind = 127.0.0.1 port = {{udp_port}} }}\n\
             tcp_accept_channel {{ bind = 127.0.0.1 port = {{tcp_port}} }}"
        ));
    match how {
        Resend::Request => a,
        Resend::Interval => a.global("send_metadata_interval", "3"),
    }
    .start()
}

fn metric_on<'a>(x: &'a Xml, host: &str, name: &str) -> Option<&'a Metric> {
    x.host(host)?.metrics.iter().find(|m| m.name == name)
}

/// Extra element lookup ignoring the key's case.
fn extra<'a>(m: &'a Metric, key: &str) -> Option<&'a str> {
    m.extra
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// All of A's metrics with their full metadata, or None while something is
/// still missing. Returns the value of `cluster_requests`.
fn complete(x: &Xml) -> Option<u64> {
    let t = metric_on(x, A_HOST, "cluster_temperature")?;
    let r = metric_on(x, A_HOST, "cluster_requests")?;
    let s = metric_on(x, A_HOST, "cluster_state")?;
    let w = metric_on(x, SPOOF_HOST, "cluster_alias_widgets")?;
    // Metadata arrives in its own packet; wait for it on every metric.
    for m in [t, r, s, w] {
        extra(m, "DESC")?;
    }
    r.val.parse().ok()
}

/// The assertions on one XML document (B's or gmetad's).
fn check_metrics(who: &str, x: &Xml) {
    let ctx = |what: &str| format!("{who}: {what}\n{}", x.text);
    let t = metric_on(x, A_HOST, "cluster_temperature").expect("checked by complete()");
    assert_eq!(t.val, "21.5", "{}", ctx("cluster_temperature VAL"));
    assert_eq!(t.type_, "float", "{}", ctx("TYPE"));
    assert_eq!(t.units, "Celsius", "{}", ctx("UNITS"));
    assert_eq!(t.slope, "both", "{}", ctx("SLOPE"));
    assert_eq!(t.tmax, 20, "{}", ctx("TMAX"));
    let groups: BTreeSet<&str> = t.extras("GROUP").into_iter().collect();
    assert_eq!(
        groups,
        BTreeSet::from(["cluster_probe", "environment"]),
        "{}",
        ctx("GROUPs")
    );
    assert_eq!(
        extra(t, "DESC"),
        Some("Probe temperature"),
        "{}",
        ctx("DESC")
    );
    assert_eq!(
        extra(t, "TITLE"),
        Some("Probe Temperature"),
        "{}",
        ctx("TITLE")
    );
    assert_eq!(
        extra(t, "site"),
        Some("rack-7"),
        "{}",
        ctx("extra key site")
    );
    assert_eq!(
        extra(t, "owner"),
        Some("ops-team"),
        "{}",
        ctx("extra key owner")
    );

    let r = metric_on(x, A_HOST, "cluster_requests").expect("checked by complete()");
    assert_eq!(r.type_, "uint32", "{}", ctx("cluster_requests TYPE"));
    assert_eq!(r.units, "requests", "{}", ctx("cluster_requests UNITS"));
    assert_eq!(r.slope, "positive", "{}", ctx("cluster_requests SLOPE"));
    assert!(r.val_f64() >= 1000.0, "{}", ctx("cluster_requests VAL"));
    assert_eq!(r.extras("GROUP"), vec!["cluster_probe"], "{}", ctx("GROUP"));
    assert_eq!(extra(r, "TITLE"), Some("Requests"), "{}", ctx("TITLE"));

    let s = metric_on(x, A_HOST, "cluster_state").expect("checked by complete()");
    assert_eq!(s.val, "cluster-ok", "{}", ctx("cluster_state VAL"));
    assert_eq!(s.type_, "string", "{}", ctx("cluster_state TYPE"));
    assert_eq!(s.slope, "zero", "{}", ctx("cluster_state SLOPE"));

    // The spoofed metric: under the spoofed host and name only.
    let spoofed = x.host(SPOOF_HOST).expect("checked by complete()");
    assert_eq!(spoofed.ip, SPOOF_IP, "{}", ctx("spoofed host IP"));
    let w = metric_on(x, SPOOF_HOST, "cluster_alias_widgets").expect("checked");
    assert_eq!(w.val, "4242", "{}", ctx("spoofed VAL"));
    assert_eq!(w.units, "widgets", "{}", ctx("spoofed UNITS"));
    assert_eq!(
        extra(w, "DESC"),
        Some("A metric reported on behalf of another host"),
        "{}",
        ctx("spoofed DESC")
    );
    assert_eq!(
        extra(w, "TITLE"),
        Some("Spoofed Widgets"),
        "{}",
        ctx("spoofed TITLE")
    );
    for h in &x.hosts {
        for m in &h.metrics {
            assert!(
                m.name != "cluster_spoofed"
                    && (m.name != "cluster_alias_widgets" || h.name == SPOOF_HOST),
                "{}",
                ctx(&format!("{} reported under host {}", m.name, h.name))
            );
        }
    }
}

fn run(how: Resend) {
    let a_udp = free_udp_port();
    let b_udp = free_udp_port();
    let b_tcp = free_tcp_port();

    let b = start_b(b_udp, b_tcp, a_udp, how);
    let a = start_a(a_udp, b_udp, how);
    let mut gmetad = Gmetad::start(&[("modpython-cluster", b_tcp)], 1);

    let before = b.wait_until(complete, secs(30));
    check_metrics("gmond B", &b.xml());
    let hosts: BTreeSet<String> = b.xml().hosts.iter().map(|h| h.name.clone()).collect();
    gmond_assert_eq!(
        b,
        hosts,
        BTreeSet::from([A_HOST.to_string(), SPOOF_HOST.to_string()]),
        "B must hold A's host and the spoofed one, nothing of its own"
    );

    gmetad.wait_until(complete, secs(30));
    check_metrics("gmetad", &gmetad.try_xml().expect("gmetad XML"));

    // Restart B on the same ports: its successor starts with no metadata.
    drop(b);
    let b = start_b(b_udp, b_tcp, a_udp, how);
    let after = b.wait_until(|x| complete(x).filter(|&v| v > before), secs(30));
    check_metrics("gmond B after restart", &b.xml());
    gmetad.wait_until(|x| complete(x).filter(|&v| v >= after), secs(30));
    check_metrics(
        "gmetad after restart",
        &gmetad.try_xml().expect("gmetad XML"),
    );

    gmond_assert!(a, a.is_running(), "gmond A exited");
    gmond_assert_eq!(a, a.log_count("[modpython] error"), 0, "A logged errors");
}

#[test]
fn metadata_request() {
    run(Resend::Request);
}

#[test]
fn metadata_interval() {
    run(Resend::Interval);
}
