def check_resources(spec, plan):
    pass
