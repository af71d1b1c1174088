-- Argo CD health of a tunnelop.dev RelayNode. The reasons and why each maps where it does:
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

-- Ready=False reasons of a relay on its way up; any other (InvalidSpec, a reason not
-- listed) is Degraded.
local progressingReasons = {
  WorkloadPending = true,
  RelayPodNotReady = true,
  AddressPending = true,
}

local draining = condition("Draining")
if draining ~= nil and draining.status ~= "True" then
  draining = nil
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  if draining ~= nil then
    hs.message = because(draining)
  else
    hs.message = "The RelayNode is being deleted"
  end
  return hs
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the relay"
  return hs
end

if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

if ready.status ~= "True" then
  -- A relay whose pod stayed not ready past spec.failoverAfterSeconds has failed over:
  -- its tunnels are being moved away, it is no longer merely starting.
  if draining ~= nil and draining.reason == "Failover" then
    hs.status = "Degraded"
    hs.message = because(ready) .. "; " .. because(draining)
  elseif ready.status == "Unknown" or progressingReasons[ready.reason] then
    hs.status = "Progressing"
    hs.message = because(ready)
  else
    hs.status = "Degraded"
    hs.message = because(ready)
  end
  return hs
end

local exposed = condition("ServiceExposed")
if exposed ~= nil and exposed.status == "False" then
  hs.status = "Degraded"
  hs.message = because(exposed)
  return hs
end

-- Draining (spec.drain, a pool's scale-down or roll-out): progressing while tunnels are
-- left to move, then healthy and empty.
local allocated = 0
if obj.status.allocated ~= nil and obj.status.allocated.tunnels ~= nil then
  allocated = obj.status.allocated.tunnels
end
if draining ~= nil and allocated > 0 then
  hs.status = "Progressing"
  hs.message = because(draining)
  return hs
end

hs.status = "Healthy"
if draining ~= nil then
  hs.message = draining.message
else
  hs.message = ready.message
end
return hs
