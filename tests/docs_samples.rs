//! Every code sample in docs/writing-modules.md runs here.
//!
//! * ```` ```python sample=NAME [exit=N] [contains=WORDS_WITH_UNDERSCORES] ````:
//!   written as `NAME.py` and run through `modpython-check` (two calls per
//!   metric) with the ```` ```pyconf sample=NAME ```` block as its config
//!   (or a generated one); the exit status must be N (default 0) and the
//!   output must contain WORDS (underscores read as spaces). The samples
//!   that pass all run together in the real gmond, and every metric
//!   `modpython-check` saw must appear in gmond's XML.
//! * ```` ```pyconf ```` blocks without a sample: parsed by gmond's own parser.
//! * ```` ```sh ```` blocks: every `modpython-check` command line is parsed
//!   by the checker's own argument parser.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{GmondBuilder, TempDir, repo_path, secs};

const DOC: &str = "docs/writing-modules.md";

struct Block {
    lang: String,
    tags: HashMap<String, String>,
    body: String,
    line: usize,
}

fn blocks() -> Vec<Block> {
    let text = std::fs::read_to_string(repo_path(DOC)).unwrap();
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => {
                let mut words = info.split_whitespace();
                let lang = words.next().unwrap_or("").to_owned();
                let tags = words
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                current = Some(Block {
                    lang,
                    tags,
                    body: String::new(),
                    line: i + 1,
                });
            }
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some(block), _) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "{DOC}: unterminated code block");
    out
}

fn check(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modpython-check"))
        .args(args)
        .env("PATH", common::DEFAULT_PATH)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The metric names in a `--json` report.
fn metric_names(json: &str) -> Vec<String> {
    json.split("\"metric\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn default_pyconf(name: &str) -> String {
    format!(
        "modules {{ module {{ name = \"{name}\" language = \"python\" }} }}\n\
         collection_group {{ collect_every = 1 time_threshold = 1 metric {{ name_match = \"^{name}_\" }} }}\n"
    )
}

#[test]
fn every_sample_in_the_writing_guide_runs() {
    let blocks = blocks();
    let pyconfs: HashMap<&str, &str> = blocks
        .iter()
        .filter(|b| b.lang == "pyconf")
        .filter_map(|b| Some((b.tags.get("sample")?.as_str(), b.body.as_str())))
        .collect();
    let tmp = TempDir::new();
    let mut working: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut python_samples = 0;

    for block in blocks.iter().filter(|b| b.lang == "python") {
        let name = block.tags.get("sample").unwrap_or_else(|| {
            panic!(
                "{DOC}:{}: a python block without sample=NAME is never run",
                block.line
            )
        });
        python_samples += 1;
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.py")), &block.body).unwrap();
        let pyconf_text = pyconfs
            .get(name.as_str())
            .map(|s| s.to_string())
            .unwrap_or_else(|| default_pyconf(name));
        let pyconf = dir.join(format!("{name}.pyconf"));
        std::fs::write(&pyconf, &pyconf_text).unwrap();
        let expected: i32 = block.tags.get("exit").map_or(0, |e| e.parse().unwrap());
        let args = [
            "--pyconf",
            pyconf.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
            "--count",
            "2",
            "--interval",
            "0.1",
        ];
        let (code, text) = check(&args);
        assert_eq!(
            code,
            Some(expected),
            "{DOC}:{}: sample {name}:\n{text}",
            block.line
        );
        if let Some(words) = block.tags.get("contains") {
            let words = words.replace('_', " ");
            assert!(
                text.contains(&words),
                "{DOC}:{}: sample {name}: {words:?} not in\n{text}",
                block.line
            );
        }
        if expected == 0 {
            let (_, json) = check(&[&args[..], &["--json"]].concat());
            let metrics = metric_names(&json);
            assert!(!metrics.is_empty(), "{name}: no metrics\n{json}");
            working.push((name.clone(), pyconf_text, metrics));
        }
    }
    assert!(
        python_samples >= 5,
        "only {python_samples} python samples found"
    );

    // All working samples together in the real gmond.
    let mut builder = GmondBuilder::new();
    for (name, pyconf, _) in &working {
        let body =
            std::fs::read_to_string(tmp.path().join(name).join(format!("{name}.py"))).unwrap();
        builder = builder
            .module_file(&format!("{name}.py"), &body)
            .pyconf_text(name, pyconf);
    }
    let g = builder.start();
    for (_, _, metrics) in &working {
        for metric in metrics {
            g.wait_metric(metric, secs(40));
        }
    }
    gmond_assert!(
        g,
        !g.log().contains("[modpython] error"),
        "a documented sample logged an error in gmond"
    );
}

#[test]
fn config_samples_parse_with_gmonds_parser() {
    let tmp = TempDir::new();
    let mut n = 0;
    for (i, block) in blocks()
        .iter()
        .enumerate()
        .filter(|(_, b)| b.lang == "pyconf")
    {
        let file = tmp.path().join(format!("{i}.conf"));
        std::fs::write(&file, &block.body).unwrap();
        // Through the checker binary: the parser runs in its own process.
        let (code, text) = check(&[
            "--pyconf",
            file.to_str().unwrap(),
            "--dir",
            tmp.path().to_str().unwrap(),
        ]);
        assert!(
            code != Some(64) && !text.contains("gmond's parser rejects"),
            "{DOC}:{}: {text}",
            block.line
        );
        n += 1;
    }
    assert!(n >= 3, "only {n} pyconf samples");
}

#[test]
fn shell_samples_are_valid_modpython_check_command_lines() {
    let mut n = 0;
    for block in blocks().iter().filter(|b| b.lang == "sh") {
        for line in block.body.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some(rest) = line.strip_prefix("modpython-check") else {
                assert!(
                    line.is_empty(),
                    "{DOC}:{}: untested command {line:?}",
                    block.line
                );
                continue;
            };
            let args: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
            match modpython::check::parse_args(&args) {
                Ok(modpython::check::Command::Check(_)) => n += 1,
                other => panic!("{DOC}:{}: {line:?} → {other:?}", block.line),
            }
        }
    }
    assert!(n >= 3, "only {n} modpython-check command lines");
    // And every fenced block is of a kind this file runs.
    for block in blocks() {
        assert!(
            ["python", "pyconf", "sh"].contains(&block.lang.as_str()),
            "{DOC}:{}: a ```{} block is not run by any test",
            block.line,
            block.lang
        );
    }
}
