//! Proves the gmond harness against the real gmond, using only gmond's
//! built-in `core_metrics` module, so it needs no modpython.so.

mod common;

use std::time::Instant;

use common::{GmondBuilder, Xml, secs};

/// `gexec` is the only core_metrics metric gmond prints as a `<METRIC>`
/// (`heartbeat` and `location` are consumed into HOST attributes).
const CORE_METRICS: &str = r#"
modules { module { name = "core_metrics" } }
collection_group {
  collect_every = 1
  time_threshold = 2
  metric { name = "heartbeat" }
  metric { name = "location" }
  metric { name = "gexec" }
}
"#;

fn core_gmond() -> GmondBuilder {
    GmondBuilder::new()
        .without_python_module()
        .extra_config(CORE_METRICS)
}

#[test]
fn core_metric_shows_up_and_sigterm_exits_zero() {
    let g = core_gmond().start();

    let m = g.wait_metric("gexec", secs(30));
    gmond_assert!(
        g,
        m.val == "ON" || m.val == "OFF",
        "unexpected gexec value {:?}",
        m.val
    );
    gmond_assert_eq!(g, m.type_, "string");
    gmond_assert_eq!(g, m.slope, "zero");
    gmond_assert_eq!(g, m.extra("GROUP"), Some("core"));
    gmond_assert_eq!(g, m.extra("TITLE"), Some("gexec"));
    gmond_assert!(g, m.extra("DESC").is_some(), "no DESC in {:?}", m.extra);
    gmond_assert_eq!(g, g.metric("gexec").as_ref(), Some(&m));
    gmond_assert!(g, g.metric("no_such_metric").is_none());

    let x = g.xml();
    gmond_assert_eq!(g, x.hosts.len(), 1);
    // LOCATION stays "unspecified" until the `location` metric has gone round.
    g.wait_until(
        |x| {
            x.hosts
                .first()?
                .attrs
                .get("LOCATION")
                .filter(|l| *l == "test")
                .cloned()
        },
        secs(30),
    );

    g.signal(libc::SIGTERM);
    let status = g.wait_exit(secs(15));
    gmond_assert!(g, status.is_some(), "gmond did not exit after SIGTERM");
    gmond_assert_eq!(g, status.and_then(|s| s.code()), Some(0));
}

#[test]
fn wait_until_sees_heartbeat_advance() {
    let g = core_gmond().start();
    let first = g.wait_until(
        |x| x.hosts.first().map(|h| h.reported).filter(|&r| r > 0),
        secs(30),
    );
    // heartbeat is collected every second and re-sent at least every 2 s.
    let later = g.wait_until(
        |x: &Xml| x.hosts.first().map(|h| h.reported).filter(|&r| r > first),
        secs(30),
    );
    gmond_assert!(g, later > first);
}

#[test]
fn hold_for_checks_every_read_and_fails_at_once() {
    let g = core_gmond().start();
    g.wait_metric("gexec", secs(30));
    // Holds: reads until the duration has passed, the last read after it.
    let started = Instant::now();
    let mut reads = 0;
    g.hold_for(secs(1), "gexec is published", |x| {
        reads += 1;
        x.metric("gexec").is_some()
    });
    gmond_assert!(
        g,
        started.elapsed() >= secs(1) && reads >= 3,
        "{reads} read(s)"
    );
    // Stops holding at the third read: fails then, not at the end.
    let started = Instant::now();
    let mut reads = 0;
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.hold_for(secs(30), "fewer than three reads", |_| {
            reads += 1;
            reads < 3
        })
    }));
    let message = failed
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .unwrap_or_else(|| g.fail("hold_for did not fail"));
    gmond_assert!(
        g,
        message.contains("\"fewer than three reads\" stopped holding"),
        "{message}"
    );
    gmond_assert!(g, started.elapsed() < secs(5), "{:?}", started.elapsed());
}

#[test]
fn debug_log_is_captured() {
    let g = core_gmond().debug_level(2).start();
    // At debug level > 1 gmond traces module loading on stderr.
    let found = g.wait_log("core_metrics", secs(30));
    gmond_assert!(g, found, "no module-loading trace in the log");
}

#[test]
fn config_error_exits_one_with_message() {
    let g = core_gmond().extra_config("no_such_option = 1").start();
    let status = g.wait_exit(secs(15));
    gmond_assert_eq!(g, status.and_then(|s| s.code()), Some(1));
    gmond_assert!(g, g.log().contains("no such option"));
}

#[test]
fn pyconf_text_is_included() {
    // conf.d is included by the main config even without modpython; a
    // fragment there can add collection groups, proving the include glob.
    let g = GmondBuilder::new()
        .without_python_module()
        .extra_config(r#"modules { module { name = "core_metrics" } }"#)
        .pyconf_text(
            "core",
            "collection_group { collect_every = 1 time_threshold = 2 metric { name = \"gexec\" } }",
        )
        .start();
    g.wait_metric("gexec", secs(30));
}

#[test]
fn xml_parses_dtd_and_decodes_latin1() {
    let doc = "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" standalone=\"yes\"?>\n\
        <!DOCTYPE GANGLIA_XML [\n<!ELEMENT GANGLIA_XML (HOST)*>\n\
        <!ATTLIST GANGLIA_XML VERSION CDATA #REQUIRED>\n]>\n\
        <GANGLIA_XML VERSION=\"3.7.2\"><CLUSTER NAME=\"c\"><HOST NAME=\"h\" IP=\"1.2.3.4\" REPORTED=\"5\">\
        <METRIC NAME=\"m\" VAL=\"caf\u{e9}\" TYPE=\"string\" UNITS=\"\" TN=\"1\" TMAX=\"60\" DMAX=\"0\" SLOPE=\"both\">\
        <EXTRA_DATA><EXTRA_ELEMENT NAME=\"GROUP\" VAL=\"a\"/><EXTRA_ELEMENT NAME=\"GROUP\" VAL=\"b\"/></EXTRA_DATA>\
        </METRIC></HOST></CLUSTER></GANGLIA_XML>\n";
    // Same document once as UTF-8 and once as Latin-1 bytes.
    let utf8 = common::decode(doc.as_bytes().to_vec());
    let latin1 = common::decode(
        doc.chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap())
            .collect(),
    );
    for text in [utf8, latin1] {
        let x = Xml::parse(text).unwrap();
        let m = x.metric("m").unwrap();
        assert_eq!(m.val, "caf\u{e9}");
        assert_eq!((m.tn, m.tmax, m.dmax), (1, 60, 0));
        assert_eq!(m.extras("GROUP"), ["a", "b"]);
        assert_eq!(m.host, "h");
        assert_eq!(x.host("h").unwrap().reported, 5);
    }
}

#[test]
fn fixture_files_are_copied() {
    let src = common::TempDir::new();
    std::fs::write(src.path().join("probe_mod.py"), "# not run\n").unwrap();
    std::fs::create_dir(src.path().join("__pycache__")).unwrap();
    std::fs::write(
        src.path().join("probe_mod.pyconf"),
        "modules { module { name = \"probe_mod\" language = \"python\" } }\n",
    )
    .unwrap();
    // Without python_module gmond ignores `language = "python"` blocks, so
    // this needs no .so.
    let g = core_gmond().fixture(src.path()).start();
    gmond_assert!(g, g.modules_dir().join("probe_mod.py").is_file());
    gmond_assert!(g, !g.modules_dir().join("__pycache__").exists());
    let confs: Vec<_> = std::fs::read_dir(g.confd_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    gmond_assert!(
        g,
        confs.iter().any(|c| c.ends_with("probe_mod.pyconf")),
        "conf.d holds {confs:?}"
    );
    g.wait_metric("gexec", secs(30));
    gmond_assert!(g, g.is_running());
}
