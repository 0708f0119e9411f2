include!("../build_link.rs");
