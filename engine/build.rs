include!("../training/build_link.rs");
