//! `modpython-module`: runs one isolated Python metric module for gmond
//! (`call_mode = isolated`). gmond starts it; it is not meant to be run by
//! hand. All the logic is in `modpython::module_process`.

fn main() {
    std::process::exit(modpython::module_process::main());
}
