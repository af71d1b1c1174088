-- Argo CD health of a tunnelop.dev RelayPool. The reasons and why each maps where it does:
-- docs/gitops.md. Only the base and table libraries are used, so the script also runs from
-- argocd-cm without useOpenLibs.
-- begin shared prelude: hack/health-prelude.lua (make health-scripts copies it)
local hs = {}

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function because(c)
  if c.message == nil or c.message == "" then
    return c.reason or ""
  end
  return (c.reason or "") .. ": " .. c.message
end
-- end shared prelude

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to create the pool's RelayNodes"
  return hs
end

if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

-- A spec or template the operator cannot turn into RelayNodes: no relay is created or
-- replaced until it is fixed in Git.
if ready.status == "False" and ready.reason == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = because(ready)
  return hs
end
local invalid = condition("InvalidTemplate")
if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = because(invalid)
  return hs
end

-- Scaling up or down, rolling out a template, draining removed relays, waiting for new
-- ones to become ready.
local scaling = condition("Scaling")
if scaling ~= nil and scaling.status == "True" then
  hs.status = "Progressing"
  hs.message = because(scaling)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
hs.status = "Progressing"
hs.message = because(ready)
return hs
