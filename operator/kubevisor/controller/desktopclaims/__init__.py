"""DesktopClaim: bind a user's claim to a desktop of its pool, mint its URL, log off."""
