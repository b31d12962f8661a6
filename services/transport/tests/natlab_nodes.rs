//! Kith nodes across the NAT lab's matrix: for every pair of presets the dialler connects through
//! the relay, data crosses, both nodes classify their NAT correctly, and the path becomes direct
//! wherever direct is possible (symmetric against symmetric or port-restricted may stay relayed).
//! Every host's socket adds 5 ms of delay and 1% loss (the lab's UDP shim: tc netem is not
//! available). The `natlab` benchmark runs the same matrix repeatedly for time-to-direct.

mod natlab;

use std::time::Duration;

use kith_transport::net::Impairment;
use kith_transport::node::nat::Mapping;
use natlab::Nat;
use natlab::pair::{direct_expected, run_pair};

fn expected_mapping(nat: Nat) -> Mapping {
    match nat {
        Nat::None => Mapping::NoNat,
        Nat::Symmetric => Mapping::EndpointDependent,
        _ => Mapping::EndpointIndependent,
    }
}

fn pair(a: Nat, b: Nat) {
    let impairment = Impairment {
        delay: Duration::from_millis(5),
        loss: 0.01,
    };
    let outcome = run_pair(a, b, impairment, Duration::from_secs(8)).unwrap();
    println!("{outcome:?}");
    assert_eq!(outcome.a_mapping, expected_mapping(a), "side a classified");
    assert_eq!(outcome.b_mapping, expected_mapping(b), "side b classified");
    if direct_expected(a, b) {
        let time = outcome
            .time_to_direct
            .unwrap_or_else(|| panic!("{a:?} x {b:?} stayed relayed"));
        assert!(time < Duration::from_secs(8), "{time:?}");
    }
}

macro_rules! pairs {
    ($($name:ident: $a:ident x $b:ident,)*) => {$(
        #[test]
        fn $name() {
            pair(Nat::$a, Nat::$b);
        }
    )*};
}

pairs! {
    none_none: None x None,
    none_full_cone: None x FullCone,
    none_port_restricted: None x PortRestricted,
    none_symmetric: None x Symmetric,
    full_cone_full_cone: FullCone x FullCone,
    full_cone_port_restricted: FullCone x PortRestricted,
    full_cone_symmetric: FullCone x Symmetric,
    port_restricted_port_restricted: PortRestricted x PortRestricted,
    port_restricted_symmetric: PortRestricted x Symmetric,
    symmetric_symmetric: Symmetric x Symmetric,
    symmetric_none: Symmetric x None,
    race_port_restricted: PortRestrictedRace x PortRestricted,
    port_restricted_race: PortRestricted x PortRestrictedRace,
    race_race: PortRestrictedRace x PortRestrictedRace,
}
