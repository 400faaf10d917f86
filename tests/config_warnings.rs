//! Module blocks that do not do what they seem to, in the real gmond's log:
//! a module configured twice (in two .pyconf files, or twice in one), and a
//! block whose `language` is misspelt. Each gets exactly one warning, which
//! names the file and line of every block concerned.

mod common;
#[path = "common/pymod.rs"]
mod pymod;

use std::path::PathBuf;

use common::{Gmond, GmondBuilder, secs};

/// Publishes the `which` param it was given as the string metric `twice_which`.
const TWICE: &str = "WHICH = []\n\n\
    def which(name):\n    return WHICH[0]\n\n\
    def metric_init(params):\n    WHICH.append(params.get('which', 'none'))\n    \
    return [desc('twice_which', which, vt='string')]\n";

const GROUP: &str = "collection_group {\n  collect_every = 1\n  time_threshold = 1\n  \
    metric { name = \"twice_which\" }\n}\n";

/// A module block for `twice` on line 2 of its text, with `param which`.
fn twice_block(which: &str) -> String {
    format!(
        "modules {{\n  module {{\n    name = \"twice\"\n    language = \"python\"\n    \
         param which {{ value = \"{which}\" }}\n  }}\n}}\n"
    )
}

/// The run's `.pyconf` files in the order gmond includes them: the
/// directory's own order, which is not the order of their names.
fn include_order(g: &Gmond) -> Vec<PathBuf> {
    std::fs::read_dir(g.confd_dir())
        .expect("read conf.d")
        .map(|e| e.expect("conf.d entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pyconf"))
        .collect()
}

fn started_with_twice(pyconfs: &[(&str, String)]) -> Gmond {
    let mut builder = GmondBuilder::new().module_file("twice.py", &pymod::module("twice", TWICE));
    for (name, text) in pyconfs {
        builder = builder.pyconf_text(name, text);
    }
    builder.start()
}

#[test]
fn a_module_in_two_pyconf_files_gets_one_warning_naming_both_files() {
    let g = started_with_twice(&[
        ("first", format!("{}{GROUP}", twice_block("first"))),
        ("second", twice_block("second")),
    ]);
    let order = include_order(&g);
    gmond_assert_eq!(g, order.len(), 2);
    // gmond reads the first included file's block first, and that block's
    // params are the ones used.
    let (first, second) = (&order[0], &order[1]);
    let used = if first.ends_with("00-first.pyconf") {
        "first"
    } else {
        "second"
    };
    let warning = format!(
        "[modpython] warning: {}: configured twice, by the module blocks at {}:2 and {}:2; \
         the module is loaded once, with the params of the block at {}:2, and the other \
         block is ignored (remove it)",
        g.module_ref("twice"),
        first.display(),
        second.display(),
        first.display()
    );
    let m = g.wait_metric("twice_which", secs(30));
    gmond_assert_eq!(g, m.val, used, "the params of the block the warning names");
    gmond_assert_eq!(g, g.log().lines().filter(|l| *l == warning).count(), 1);
    gmond_assert_eq!(g, g.log_count("configured twice"), 1);
}

#[test]
fn a_module_given_twice_in_one_file_gets_one_warning_with_both_lines() {
    // The second `module` is on line 10: the first block's 7 lines, a blank
    // line, then `modules {`.
    let text = format!("{}\n{}{GROUP}", twice_block("upper"), twice_block("lower"));
    let g = started_with_twice(&[("both", text)]);
    let file = g.confd_dir().join("00-both.pyconf");
    let warning = format!(
        "[modpython] warning: {}: configured twice, by the module blocks at {f}:2 and {f}:10; \
         the module is loaded once, with the params of the block at {f}:2, and the other \
         block is ignored (remove it)",
        g.module_ref("twice"),
        f = file.display()
    );
    let m = g.wait_metric("twice_which", secs(30));
    gmond_assert_eq!(g, m.val, "upper");
    gmond_assert_eq!(g, g.log().lines().filter(|l| *l == warning).count(), 1);
    gmond_assert_eq!(g, g.log_count("configured twice"), 1);
}

#[test]
fn a_misspelt_language_is_reported_once_with_its_file_and_line() {
    let body = "def one(name):\n    return 1\n\n\
                def metric_init(params):\n    return [desc('typo_one', one)]\n";
    let g = GmondBuilder::new()
        .module_file("typo.py", &pymod::module("typo", body))
        .module_file(
            "fine.py",
            &pymod::module("fine", &body.replace("typo_", "fine_")),
        )
        .pyconf_text("fine", &pymod::pyconf(&[("fine", "")], &["^fine_"]))
        .pyconf_text(
            "typo",
            "# the language is misspelt\nmodules {\n  module {\n    name = \"typo\"\n    \
             language = \"pyhton\"\n  }\n}\n",
        )
        .start();
    let warning = format!(
        "[modpython] warning: {}: the module block at {}:3 names this module but has \
         language = \"pyhton\", not \"python\", so it is ignored; typo.py is not loaded \
         (write language = \"python\")",
        g.module_ref("typo"),
        g.confd_dir().join("01-typo.pyconf").display()
    );
    gmond_assert!(g, g.wait_log(&warning, secs(30)), "missing {warning:?}");
    // The module loaded after it has its metric: init has finished.
    g.wait_metric("fine_one", secs(30));
    gmond_assert_eq!(g, g.log().lines().filter(|l| *l == warning).count(), 1);
    gmond_assert_eq!(g, g.log_count("pyhton"), 1);
    gmond_assert!(g, g.metric("typo_one").is_none(), "typo.py was loaded");
}
