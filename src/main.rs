//! The `dagfs` binary; everything lives in the library's [`dagfs::cli`].

fn main() -> std::process::ExitCode {
    dagfs::cli::main(std::env::args_os())
}
