pub mod appliance;
pub mod frames;
pub mod lab_appliance;
