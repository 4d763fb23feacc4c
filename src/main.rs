fn main() {
    println!("walhook {}", env!("CARGO_PKG_VERSION"));
}
