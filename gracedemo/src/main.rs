//! The `/sleep` demo server. Not written yet: issue 6 fills it.

fn main() {
    eprintln!("gracedemo is not written yet (issue 6); see README.md");
    std::process::exit(2);
}
