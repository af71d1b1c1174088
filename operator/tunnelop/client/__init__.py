"""`tunnelop client`: frpc that follows its tunnel. It watches the tunnel's credentials
Secret and restarts frpc with the new config whenever the operator rewrites it (the tunnel
moved to another relay, or its token changed)."""
