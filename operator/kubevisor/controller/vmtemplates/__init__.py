"""VMTemplates: ``handlers`` (report usability, wake the VMs using a template) and
``status`` (what a template reports, pure)."""
