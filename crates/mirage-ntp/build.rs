//! The NTP engine as a KVM guest (`--sandbox kvm`, and `auto` where KVM
//! works), embedded in the binary.
fn main() {
    mirage_kvm_build::build_image("guest-ntp", &[]);
}
