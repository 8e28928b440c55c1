//! The adversarial suite: each test attacks a running server the way a hostile client,
//! receiver or careless operator would, and checks that the service keeps answering, loses
//! nothing and holds nothing without bound. Every way in that is found gets a test here.

mod input;
mod leaks;
mod outage;
mod settings;
mod store;
