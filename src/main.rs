fn main() {
    println!("recapc: not built yet");
}
