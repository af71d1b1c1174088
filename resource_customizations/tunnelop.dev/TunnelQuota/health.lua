-- Argo CD health of a tunnelop.dev TunnelQuota. The reasons and why each maps where it
-- does: docs/gitops.md. Only the base and table libraries are used, so the script also runs
-- from argocd-cm without useOpenLibs.
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
  hs.message = "Waiting for the operator to count the namespace's usage"
  return hs
end

if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

-- The namespace's Tunnels are stopped: by this quota's kill switch (spec.suspended), by
-- another quota's, or because the monthly traffic is used up (until the next period).
local suspended = condition("Suspended")
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = because(suspended)
  return hs
end

if ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = because(ready)
  return hs
end

-- A quota that turns Tunnels away, or is below what is in use, is doing its job: healthy,
-- with the figures. The Tunnels it turns away are Degraded themselves (QuotaExceeded).
hs.status = "Healthy"
local exceeded = condition("Exceeded")
if exceeded ~= nil and exceeded.message ~= nil and exceeded.message ~= "" then
  hs.message = exceeded.message
else
  hs.message = ready.message
end
return hs
