//! The ids each role runs as: of the service's own, one per role, so that
//! no other program (not `nobody`, which unrelated software shares) can
//! signal a role or write its files, and a compromised engine's uid owns
//! nothing. A service keeps its `[ids]` table (a key per role) and its
//! defaults; the rules are here: how an id is written, that no role runs as
//! root unless asked for debugging, how the ids fit a supervisor that does
//! not run as root, and which choices weaken the split.
//!
//! ```
//! use mirage_sdk::service::ids::{self, RoleId};
//!
//! #[derive(serde::Deserialize)]
//! struct Ids { engine: RoleId, network: RoleId }
//! let i: Ids = toml::from_str("engine = 65521\nnetwork = \"65520:65530\"").unwrap();
//! assert_eq!(i.network, RoleId { uid: 65520, gid: 65530 });
//! let roles = [("engine", i.engine), ("network", i.network)];
//! assert!(ids::refuse_root(&roles).is_ok());
//! assert!(ids::warnings(&roles, true).is_empty());
//! ```

use serde::Deserialize;

use super::Service;

/// `nobody`/`nogroup`.
pub const NOBODY: u32 = 65534;

/// A role's ids: `65520` (uid and gid alike) or `"65520:65530"`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(try_from = "IdsValue")]
pub struct RoleId {
    pub uid: u32,
    pub gid: u32,
}

impl RoleId {
    /// uid = gid = `id`.
    pub const fn same(id: u32) -> RoleId {
        RoleId { uid: id, gid: id }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdsValue {
    Same(u32),
    Pair(String),
}

impl TryFrom<IdsValue> for RoleId {
    type Error = String;
    fn try_from(v: IdsValue) -> Result<Self, String> {
        let id = match v {
            IdsValue::Same(n) => RoleId::same(n),
            IdsValue::Pair(s) => {
                let bad = || format!("{s:?} is not UID or \"UID:GID\" (numbers)");
                let (u, g) = s.split_once(':').ok_or_else(bad)?;
                RoleId {
                    uid: u.parse().map_err(|_| bad())?,
                    gid: g.parse().map_err(|_| bad())?,
                }
            }
        };
        // (uid_t)-1 means "unchanged" to setresuid and chown.
        if id.uid == u32::MAX || id.gid == u32::MAX {
            return Err("4294967295 is not a valid id".into());
        }
        Ok(id)
    }
}

/// No role as uid or gid 0, which would undo its sandbox: the error is the
/// config key (`ids.ROLE`) and why.
pub fn refuse_root(roles: &[(&str, RoleId)]) -> Result<(), (String, &'static str)> {
    match roles.iter().find(|(_, id)| id.uid == 0 || id.gid == 0) {
        Some((role, _)) => Err((
            format!("ids.{role}"),
            "uid/gid 0 would run the role as root, undoing its sandbox; \
             give it an unprivileged id (or set ids.allow_root = true, for debugging only)",
        )),
        None => Ok(()),
    }
}

/// Fit the role ids to the process the supervisor runs as. As root it
/// switches each role to its own ids. Otherwise (a container or a systemd
/// unit, run as the service's uid with ambient capabilities) no role can
/// change uid: roles not named in the config (`None`) get the process's
/// ids, and a role named with other ids is an error.
pub fn fit_to_process<S: Service>(
    roles: &mut [(&str, Option<RoleId>, &mut RoleId)],
    euid: u32,
    egid: u32,
) -> Result<(), String> {
    if euid == 0 {
        return Ok(());
    }
    let own = RoleId { uid: euid, gid: egid };
    for (role, given, slot) in roles {
        match given {
            Some(id) if *id != own => {
                return Err(format!(
                    "ids.{role} = \"{}:{}\", but {} runs as {euid}:{egid}, not root, and \
                     cannot switch a role to other ids: remove [ids] (the roles then run as \
                     {euid}:{egid}) or start it as root",
                    id.uid,
                    id.gid,
                    S::program()
                ));
            }
            _ => **slot = own,
        }
    }
    Ok(())
}

/// Id choices that work but weaken the split, for the log: `nobody`'s ids
/// (shared with unrelated software) and, when the supervisor can give each
/// role its own (`distinct_possible`: it runs as root), roles sharing a uid.
pub fn warnings(roles: &[(&str, RoleId)], distinct_possible: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (role, id)) in roles.iter().enumerate() {
        if id.uid == NOBODY || id.gid == NOBODY {
            out.push(format!(
                "ids.{role} is {}:{}: 65534 is `nobody`, which other software runs as; \
                 its processes could signal this role or write what it owns",
                id.uid, id.gid
            ));
        }
        if distinct_possible && let Some((other, _)) = roles[i + 1..].iter().find(|(_, o)| o.uid == id.uid) {
            out.push(format!(
                "ids.{role} and ids.{other} share uid {}: each could signal the other",
                id.uid
            ));
        }
    }
    out
}

/// Declares a service's `[ids]` table and the ids in force, one field per
/// role with its default uid = gid, and the rules above for them: the
/// table (`Option` per role, `allow_root`, unknown keys refused; the
/// service's crate needs `serde`) and the ids with `DEFAULT`, `resolve`
/// (the table over the defaults, root refused unless allowed),
/// `fit_to_process` and `warnings`.
///
/// ```
/// #[derive(Debug, Clone, Copy)]
/// struct Ntp;
/// impl mirage_sdk::service::Service for Ntp {
///     const NAME: &'static str = "ntp";
///     const NOUN: &'static str = "client";
/// }
/// mirage_sdk::role_ids! {
///     /// `[ids]`: who each role runs as.
///     pub struct IdsConfig => pub struct RoleIds {
///         engine: 65526,
///         /// Also owns the state directory.
///         actuator: 65527,
///     }
/// }
/// let section: IdsConfig = toml::from_str("engine = \"900:901\"").unwrap();
/// let mut ids = RoleIds::resolve(&section).unwrap();
/// assert_eq!((ids.engine.gid, ids.actuator.uid), (901, 65527));
/// assert!(toml::from_str::<IdsConfig>("nobody = 1").is_err());
/// let root: IdsConfig = toml::from_str("actuator = 0").unwrap();
/// assert_eq!(RoleIds::resolve(&root).unwrap_err().0, "ids.actuator");
/// // Not root: roles the table does not name run as the supervisor.
/// ids.fit_to_process::<Ntp>(&IdsConfig::default(), 1000, 1000).unwrap();
/// assert_eq!(ids.engine.uid, 1000);
/// assert_eq!(ids.warnings(false), Vec::<String>::new());
/// ```
#[macro_export]
macro_rules! role_ids {
    (
        $(#[$sm:meta])* $svis:vis struct $section:ident =>
        $(#[$im:meta])* $ivis:vis struct $ids:ident {
            $( $(#[$fm:meta])* $role:ident : $default:expr ),+ $(,)?
        }
    ) => {
        $(#[$sm])*
        #[derive(serde::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[serde(deny_unknown_fields, default)]
        $svis struct $section {
            $( $(#[$fm])* pub $role: Option<$crate::service::ids::RoleId>, )+
            /// Let a role run as uid or gid 0 (never needed: for debugging only).
            pub allow_root: bool,
        }

        $(#[$im])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $ivis struct $ids {
            $( pub $role: $crate::service::ids::RoleId, )+
        }

        impl $ids {
            pub const DEFAULT: $ids = $ids {
                $( $role: $crate::service::ids::RoleId::same($default), )+
            };

            /// Each role's config key and ids.
            pub fn named(&self) -> Vec<(&'static str, $crate::service::ids::RoleId)> {
                vec![$( (stringify!($role), self.$role) ),+]
            }

            /// What `section` gives, the defaults for the rest; no role as
            /// root unless `allow_root` (the error is the key and why).
            pub fn resolve(section: &$section) -> Result<$ids, (String, &'static str)> {
                let ids = $ids {
                    $( $role: section.$role.unwrap_or(Self::DEFAULT.$role), )+
                };
                if !section.allow_root {
                    $crate::service::ids::refuse_root(&ids.named())?;
                }
                Ok(ids)
            }

            /// [`fit_to_process`]($crate::service::ids::fit_to_process).
            pub fn fit_to_process<S: $crate::service::Service>(
                &mut self,
                section: &$section,
                euid: u32,
                egid: u32,
            ) -> Result<(), String> {
                let mut roles = [$( (stringify!($role), section.$role, &mut self.$role) ),+];
                $crate::service::ids::fit_to_process::<S>(&mut roles, euid, egid)
            }

            /// [`warnings`]($crate::service::ids::warnings).
            pub fn warnings(&self, distinct_possible: bool) -> Vec<String> {
                $crate::service::ids::warnings(&self.named(), distinct_possible)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ntp;
    impl Service for Ntp {
        const NAME: &'static str = "ntp";
    }

    fn parse(text: &str) -> Result<RoleId, String> {
        #[derive(Deserialize)]
        struct T {
            id: RoleId,
        }
        toml::from_str::<T>(&format!("id = {text}"))
            .map(|t| t.id)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ids_are_one_number_or_a_pair_and_never_the_unchanged_marker() {
        assert_eq!(parse("900"), Ok(RoleId::same(900)));
        assert_eq!(parse("\"901:902\""), Ok(RoleId { uid: 901, gid: 902 }));
        for bad in [
            "\"901\"",
            "\"a:b\"",
            "\"1:2:3\"",
            "-1",
            "4294967295",
            "\"4294967295:1\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_is_refused_by_key() {
        let (key, why) =
            refuse_root(&[("a", RoleId::same(5)), ("b", RoleId { uid: 6, gid: 0 })]).unwrap_err();
        assert_eq!(key, "ids.b");
        assert!(why.contains("allow_root"), "{why}");
        assert!(refuse_root(&[("a", RoleId::same(5))]).is_ok());
    }

    #[test]
    fn a_non_root_supervisor_gives_its_ids_to_roles_not_named() {
        let (mut a, mut b) = (RoleId::same(1), RoleId::same(2));
        let mut roles = [("a", None, &mut a), ("b", Some(RoleId::same(2)), &mut b)];
        fit_to_process::<Ntp>(&mut roles, 0, 0).unwrap();
        assert_eq!((a, b), (RoleId::same(1), RoleId::same(2)));
        fit_to_process::<Ntp>(&mut [("a", None, &mut a)], 7, 8).unwrap();
        assert_eq!(a, RoleId { uid: 7, gid: 8 });
        let mut roles = [
            ("a", None, &mut a),
            ("b", Some(RoleId { uid: 7, gid: 8 }), &mut b),
        ];
        let e = fit_to_process::<Ntp>(&mut roles, 9, 9).unwrap_err();
        assert!(
            e.starts_with("ids.b = \"7:8\", but mirage-ntp runs as 9:9"),
            "{e}"
        );
    }

    #[test]
    fn nobody_and_shared_uids_are_warned_about_once() {
        let roles = [
            ("a", RoleId::same(NOBODY)),
            ("b", RoleId::same(7)),
            ("c", RoleId::same(7)),
        ];
        let w = warnings(&roles, true);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("ids.a") && w[0].contains("nobody"), "{w:?}");
        assert!(w[1].contains("ids.b and ids.c share uid 7"), "{w:?}");
        assert_eq!(warnings(&roles, false).len(), 1);
    }
}
