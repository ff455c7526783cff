//! The lifecycle test server ([`grace_tests::lifeprobe`]), answering as version `lifeprobe2`.

fn main() -> std::process::ExitCode {
    grace_tests::lifeprobe::main(env!("CARGO_BIN_NAME"))
}
