//! `modpython-check`: try gmond's Python metric modules without gmond.
//! All the logic is in `modpython::check`; see `--help`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(modpython::check::main_with_args(&args));
}
