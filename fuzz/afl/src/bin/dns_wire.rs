//! AFL++ entry point; the body is shared with the libFuzzer target.
fn main() {
    afl::fuzz!(|data: &[u8]| mirage_fuzz::dns_wire(data));
}
