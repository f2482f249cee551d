//! The `pgsvc` binary: a thin edge over the library's CLI.

fn main() -> std::process::ExitCode {
    pgsvc::cli::main()
}
