//! `cargo xtask <task>`: the project's own automation. Tasks arrive with their issues
//! (`bench`: issue 9, `demo`: issue 6).

fn main() {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        None | Some("-h") | Some("--help") => {
            println!(
                "usage: cargo xtask <task>\n\nNo tasks yet: `bench` and `demo` come with issues 9 and 6."
            );
        }
        Some(other) => {
            eprintln!("error: unknown task {other:?}; run `cargo xtask --help` for the list");
            std::process::exit(2);
        }
    }
}
