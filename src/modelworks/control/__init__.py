"""Control-plane services over the store: keys, projects, deployments, usage and audit."""
